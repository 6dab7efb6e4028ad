"""The read-ahead thread: what it hashes is exactly what it read and handed over."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from shared.validation.reading import ReadAhead

CHUNKS = [bytes([i]) * 1000 for i in range(50)]  # many more than the queue holds


def test_the_hash_covers_every_chunk_handed_over() -> None:
    reader = ReadAhead(CHUNKS, depth=2)
    assert b"".join(reader) == b"".join(CHUNKS)
    assert reader.sha256.hexdigest() == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert reader.size == 50_000


def test_a_read_error_reaches_the_consumer_after_the_chunks_before_it() -> None:
    def failing() -> Iterator[bytes]:
        yield from CHUNKS[:10]
        raise OSError("disk gone")

    reader = ReadAhead(failing(), depth=2)
    taken: list[bytes] = []
    with pytest.raises(OSError, match="disk gone"):
        taken.extend(reader)
    assert taken == CHUNKS[:10]
    assert reader.size == 10_000


def test_close_stops_reading_early() -> None:
    reader = ReadAhead(iter(CHUNKS), depth=2)
    next(iter(reader))
    reader.close()
    assert reader.size < 50_000
