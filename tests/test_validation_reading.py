"""The read-ahead thread: what it hashes is exactly what it read, handed over or not."""

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


def test_after_skip_rest_it_hashes_to_the_end_without_anyone_taking_chunks() -> None:
    reader = ReadAhead(CHUNKS, depth=2)
    head = next(iter(reader))
    reader.skip_rest()  # the queue is full and nobody reads it: the thread must not block
    reader.finish()
    assert head == CHUNKS[0]
    assert reader.size == 50_000
    assert reader.sha256.hexdigest() == hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def test_finish_reraises_a_read_error() -> None:
    def failing() -> Iterator[bytes]:
        yield from CHUNKS[:10]
        raise OSError("disk gone")

    reader = ReadAhead(failing(), depth=2)
    reader.skip_rest()
    with pytest.raises(OSError, match="disk gone"):
        reader.finish()
    assert reader.size == 10_000


def test_close_stops_reading_early() -> None:
    reader = ReadAhead(iter(CHUNKS), depth=2)
    next(iter(reader))
    reader.close()
    assert reader.size < 50_000


def test_finish_after_close_refuses_to_pass_off_a_partial_hash() -> None:
    reader = ReadAhead(iter(CHUNKS), depth=2)
    reader.close()
    with pytest.raises(RuntimeError, match="only part"):
        reader.finish()
