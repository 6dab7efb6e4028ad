"""Reading ahead: the next chunks are read and hashed on a helper thread while parsing goes on."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import suppress

CHUNK_SIZE = 1024 * 1024


class ReadAhead:
    """Reads and hashes chunks on a helper thread while the caller parses the previous ones.

    Reading (a file or a blob download) and SHA-256 release the GIL, so they overlap with
    parsing on a second core, and a download's network waits overlap with the parsing
    too. The queue holds at most ``depth`` chunks, which bounds memory. ``size`` and
    ``sha256`` cover exactly the chunks taken from the source and are final once the
    iteration has ended or :meth:`close` has returned.
    """

    def __init__(self, chunks: Iterable[bytes], depth: int = 4) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)  # None: the end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(chunks,), name="validation-read", daemon=True)
        self._thread.start()

    def _produce(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                self.sha256.update(chunk)
                self.size += len(chunk)
                self._queue.put(chunk)
        except BaseException as error:  # re-raised in the consuming thread, where the caller sees it
            self._queue.put(error)
            return
        self._queue.put(None)

    def __iter__(self) -> Iterator[bytes]:
        """The chunks in order; whoever stops early calls :meth:`close`."""
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _drain(self) -> None:
        with suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def close(self) -> None:
        """Stop reading (validation may stop early) and wait for the helper thread."""
        self._stop.set()
        while self._thread.is_alive():
            self._drain()  # unblocks a put waiting for room
            self._thread.join(timeout=0.01)
