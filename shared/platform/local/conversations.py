"""A job's train and test splits: downloaded from blob storage, read as chat conversations.

The splits are the prepared ultrachat-shaped JSONL files intake wrote (``messages`` plus fields such
as ``prompt`` and ``prompt_id``). Only ``messages`` is kept: TRL takes any example that has a
``prompt`` key for a prompt-completion pair and would train on the wrong thing. Errors name the
blob and line, since they end up as the failed job's error.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.config import StorageAccount
from shared.platform.port import DataRef

Conversation = list[dict[str, str]]


class DataError(Exception):
    """A split is missing or unreadable; the message is for the operator."""


def download(account: StorageAccount, ref: DataRef, target: Path) -> Path:
    """Copy the blob ``ref`` to ``target`` (a file in the job's folder, kept for inspection)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobClient

    if account.connection_string:
        blob = BlobClient.from_connection_string(account.connection_string, ref.container, ref.path)
    else:
        from shared.identity import credential

        blob = BlobClient(account.blob_url, ref.container, ref.path, credential=credential(account.client_id))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with target.open("wb") as file:
            blob.download_blob().readinto(file)
    except ResourceNotFoundError:
        target.unlink(missing_ok=True)
        raise DataError(f"{ref.container}/{ref.path} does not exist in the storage account") from None
    return target


def read(path: Path, label: str) -> list[Conversation]:
    """The ``messages`` of every non-blank line of a JSONL split."""
    conversations = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(
                    f"{label} line {number}: not a chat example ({type(error).__name__}: {error})"
                ) from None
    if not conversations:
        raise DataError(f"{label} has no examples")
    return conversations
