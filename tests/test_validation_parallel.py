"""The many-core pass gives exactly the one-core report, whatever falls on a block boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.validation import ValidationOptions, parallel, validate_chunks, validate_path, validator
from tests.test_validation import POSITIVE, encode, row, write


def everything_wrong() -> list[bytes]:
    """Every per-line finding, duplicates across the file, blank lines and a too-long line."""
    lines = [encode(row(i)) for i in range(1, 41)]
    for offset, (_, line) in enumerate(POSITIVE):
        lines.insert(3 + offset * 2, encode(line))
    lines += [b"", b"   ", encode(row(7)), encode(row(8, prompt_id="id-000002")), b"x" * 5000, encode(row(99))]
    return lines


@pytest.mark.parametrize("block_bytes", [1, 200, 5_000, 10**9])
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_report_equals_the_serial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int, workers: int
) -> None:
    path = write(tmp_path, everything_wrong(), newline=b"\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a BOM, so line 1 needs its special case
    options = ValidationOptions(max_line_bytes=2000, samples_per_code=3, keep_examples=5)
    serial = validate_path(path, options, workers=1).to_dict()
    monkeypatch.setattr(parallel, "BLOCK_BYTES", block_bytes)
    assert validate_path(path, options, workers=workers).to_dict() == serial
    assert serial["counts"]["line.too_long"] == 1
    assert serial["counts"]["example.duplicate"] >= 1


@pytest.mark.parametrize("chunk_bytes", [7, 300, 10**6])
@pytest.mark.parametrize("block_bytes", [1, 1_000, 10**9])
def test_streams_cut_anywhere_give_the_serial_report(
    monkeypatch: pytest.MonkeyPatch, chunk_bytes: int, block_bytes: int
) -> None:
    """Chunks smaller than a line, too-long lines spanning many chunks, one at the very end."""
    data = b"\n".join([b"", *everything_wrong(), b"y" * 4000, encode(row(5)), b"z" * 2500])
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    options = ValidationOptions(max_line_bytes=2000, samples_per_code=4)
    serial = validate_chunks(chunks, options, source="s").to_dict()
    monkeypatch.setattr(parallel, "BLOCK_BYTES", block_bytes)
    assert validate_chunks(chunks, options, source="s", workers=2).to_dict() == serial
    assert serial["counts"]["line.too_long"] == 3


@pytest.mark.parametrize(
    "lines",
    [
        [b"[", encode(row(1)) + b",", encode(row(2)), b"]"],  # a JSON array
        [b"", b"x" * 5000, b"", b"{", b'  "messages": []', b"}"],  # pretty-printed, after a too-long line
    ],
)
def test_a_file_that_is_not_json_lines_stops_at_its_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[bytes]
) -> None:
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 1)
    path = write(tmp_path, lines)
    options = ValidationOptions(max_line_bytes=2000)
    serial = validate_path(path, options, workers=1).to_dict()
    assert validate_path(path, options, workers=2).to_dict() == serial
    assert serial["valid"] is False


def test_big_files_use_the_cores_and_small_ones_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[int] = []
    real = validator.validate_chunks
    monkeypatch.setattr(validator, "validate_chunks", lambda *a, **k: used.append(k["workers"]) or real(*a, **k))
    monkeypatch.setattr(validator.os, "cpu_count", lambda: 2)
    path = write(tmp_path, [row(i) for i in range(20)])
    validate_path(path, ValidationOptions())
    monkeypatch.setattr(validator, "PARALLEL_FROM_BYTES", 1)
    validate_path(path, ValidationOptions())
    assert used == [1, 2]
