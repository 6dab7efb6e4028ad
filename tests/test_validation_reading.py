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


def test_a_reader_that_hands_nothing_over_hashes_to_the_end() -> None:
    reader = ReadAhead(CHUNKS, depth=2, hand_over=False)  # many more chunks than the queue holds: never blocks
    reader.finish()
    assert reader.size == 50_000
    assert reader.sha256.hexdigest() == hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def test_finish_reraises_a_read_error() -> None:
    def failing() -> Iterator[bytes]:
        yield from CHUNKS[:10]
        raise OSError("disk gone")

    reader = ReadAhead(failing(), depth=2, hand_over=False)
    with pytest.raises(OSError, match="disk gone"):
        reader.finish()
    assert reader.size == 10_000


def test_close_stops_reading_early() -> None:
    reader = ReadAhead(iter(CHUNKS), depth=2)
    next(iter(reader))
    reader.close()
    assert reader.size < 50_000


def test_finish_after_close_refuses_to_pass_off_a_partial_hash() -> None:
    reader = ReadAhead(iter(CHUNKS), depth=2, hand_over=False)
    reader.close()
    with pytest.raises(RuntimeError, match="only part"):
        reader.finish()


def test_a_hashing_only_reader_cannot_be_iterated_and_a_handing_one_cannot_be_finished() -> None:
    with pytest.raises(RuntimeError, match="hands no chunks"):
        next(iter(ReadAhead(CHUNKS, hand_over=False)))
    reader = ReadAhead(CHUNKS, depth=2)
    with pytest.raises(RuntimeError, match="iterate this one"):
        reader.finish()
    reader.close()
