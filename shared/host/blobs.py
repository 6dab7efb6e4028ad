"""Blob-created events for the local host: notice new or overwritten blobs in the intake container.

Azure raises a BlobCreated event per upload (the blob trigger's ``source=EventGrid``);
Azurite has no Event Grid, so the local host lists the container and delivers every blob
whose ETag it has not delivered yet. What was delivered is remembered on disk, so a restart
does not re-deliver everything (it would be harmless, as intake is idempotent, but slow).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, ContainerClient

log = logging.getLogger(__name__)


class BlobWatcher:
    def __init__(self, container: ContainerClient, prefix: str, state_file: Path) -> None:
        self._container = container
        self._prefix = prefix
        self._state_file = state_file
        self._seen: dict[str, str] = json.loads(state_file.read_text()) if state_file.exists() else {}

    def deliver(self, handler: Callable[[BlobClient], None]) -> int:
        """Call ``handler`` for each new blob version under the prefix; return how many."""
        delivered = 0
        for blob in self._container.list_blobs(name_starts_with=self._prefix):
            if self._seen.get(blob.name) == blob.etag:
                continue
            try:
                handler(self._container.get_blob_client(blob.name))
            except Exception:
                # The Functions host retries a failed blob trigger; so do we, on the next pass.
                log.exception("intake failed for %s; retrying on the next pass", blob.name)
                continue
            self._seen[blob.name] = blob.etag
            delivered += 1
        if delivered:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            self._state_file.write_text(json.dumps(self._seen))
        return delivered
