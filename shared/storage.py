"""Storage clients built from the storage settings (a connection string or an identity), and a streaming blob writer.

The SDK imports are deferred to first use: they cost ~0.5 s each and the Functions host
imports every blueprint at start-up.
"""

from __future__ import annotations

from contextlib import suppress
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.config import Settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.blob import BlobClient, ContainerClient
    from azure.storage.queue import QueueClient

BLOCK_SIZE = 4 * 1024 * 1024


class Storage:
    """The account ftpilot works in: intake container, run table, rollout and events queues."""

    def __init__(self, settings: Settings, **client_options: Any) -> None:
        """``client_options`` go to every client (a transport, a retry policy)."""
        self.settings = settings
        self.account = settings.storage_account
        self._options = client_options

    def _credential(self) -> Any:
        from shared.identity import credential

        return credential(self.account.client_id)

    @cached_property
    def container(self) -> ContainerClient:
        from azure.storage.blob import ContainerClient

        name = self.settings.intake_container
        if self.account.connection_string:
            return ContainerClient.from_connection_string(self.account.connection_string, name, **self._options)
        return ContainerClient(self.account.blob_url, name, credential=self._credential(), **self._options)

    def blob(self, name: str) -> BlobClient:
        return self.container.get_blob_client(name)

    @cached_property
    def table(self) -> TableClient:
        from azure.data.tables import TableClient

        name = self.settings.runs_table
        if self.account.connection_string:
            return TableClient.from_connection_string(self.account.connection_string, name, **self._options)
        return TableClient(self.account.table_url, name, credential=self._credential(), **self._options)

    @cached_property
    def queue(self) -> QueueClient:
        return self._queue(self.settings.rollout_queue)

    @cached_property
    def poison_queue(self) -> QueueClient:
        """Where the Functions host moves a rollout message after its last failed attempt."""
        return self._queue(f"{self.settings.rollout_queue}-poison")

    @cached_property
    def events_queue(self) -> QueueClient:
        """Wakes the sender of a run's lifecycle events (``shared.publish``)."""
        return self._queue(self.settings.events_queue)

    def _queue(self, name: str) -> QueueClient:
        from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy, QueueClient

        # Base64, because that is what the Functions queue trigger expects by default.
        options = {
            **self._options,
            "message_encode_policy": BinaryBase64EncodePolicy(),
            "message_decode_policy": BinaryBase64DecodePolicy(),
        }
        if self.account.connection_string:
            return QueueClient.from_connection_string(self.account.connection_string, name, **options)
        return QueueClient(self.account.queue_url, name, credential=self._credential(), **options)

    def put_report(self, names: tuple[str, str], document: dict[str, Any], markdown: str) -> None:
        """A report pair, JSON for machines and Markdown for people, replacing an earlier one."""
        import orjson
        from azure.storage.blob import ContentSettings

        json_name, md_name = names
        self.container.upload_blob(
            json_name,
            orjson.dumps(document, option=orjson.OPT_INDENT_2),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )
        self.container.upload_blob(
            md_name, markdown.encode(), overwrite=True, content_settings=ContentSettings(content_type="text/markdown")
        )

    def ensure(self) -> None:
        """Create the container, table and queue when missing (local host and tests)."""
        from azure.core.exceptions import ResourceExistsError

        for create in (
            self.container.create_container,
            self.table.create_table,
            self.queue.create_queue,
            self.poison_queue.create_queue,
            self.events_queue.create_queue,
        ):
            with suppress(ResourceExistsError):
                create()


def error_message(error: Exception) -> str:
    """The first line of a storage error (the SDK appends request ids and the XML body) and its code."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    code = getattr(error, "error_code", None)
    code = getattr(code, "value", code)  # the SDK's StorageErrorCode enum, or a plain string
    return f"{first} ({code})" if code else first


class BlockWriter:
    """Write a blob as a stream of 4 MiB blocks, committed once at the end.

    Nothing is visible under the name until ``commit()``, so a crash never leaves a
    half-written split that a later step could mistake for a finished one.
    """

    def __init__(self, blob: BlobClient) -> None:
        self._blob = blob
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.bytes += len(data)
        if len(self._buffer) >= BLOCK_SIZE:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        block_id = f"{len(self._blocks):08d}"
        self._blob.stage_block(block_id, bytes(self._buffer))
        self._blocks.append(block_id)
        self._buffer.clear()

    def commit(self, content_type: str = "application/jsonl") -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        self._flush()
        self._blob.commit_block_list(
            [BlobBlock(block_id=b) for b in self._blocks], content_settings=ContentSettings(content_type=content_type)
        )
