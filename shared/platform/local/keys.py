"""Endpoint keys: generated with ``secrets``, one owner-only file per endpoint, never logged.

A managed endpoint authenticates callers with a key (``Authorization: Bearer <key>``). Locally the
key lives in ``data_dir/keys/<endpoint>.key``, readable only by its owner (the folder too), so the
router can read it at start-up and the adapter at invoke time; it is never passed on a command
line (visible to every user in ``ps``), in the environment, or into the state database.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from shared.platform.port import NotFoundError

KEY_BYTES = 32


def key_path(keys_dir: Path, endpoint: str) -> Path:
    return keys_dir / f"{endpoint}.key"


def create_key(keys_dir: Path, endpoint: str) -> None:
    """Give ``endpoint`` a key unless it has one (a repeated create keeps the first key)."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    try:
        descriptor = os.open(key_path(keys_dir, endpoint), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secrets.token_urlsafe(KEY_BYTES))


def read_key(keys_dir: Path, endpoint: str) -> str:
    try:
        return key_path(keys_dir, endpoint).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise NotFoundError(f"endpoint {endpoint} has no key") from None


def delete_key(keys_dir: Path, endpoint: str) -> None:
    key_path(keys_dir, endpoint).unlink(missing_ok=True)
