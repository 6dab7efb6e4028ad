"""The file level: encodings, binary formats, JSON framing, and the line reader itself."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.validation import LineTooLongError, ValidationOptions, iter_lines, validate_chunks, validate_path
from tests.test_validation import BASE, encode, lines_of, row, rows_with, write


def jsonl(rows: list | None = None) -> bytes:
    return b"".join(encode(line) + b"\n" for line in (rows or rows_with({})))


def validate_bytes(tmp_path: Path, data: bytes, **options: object) -> dict:
    path = tmp_path / "upload.jsonl"
    path.write_bytes(data)
    return validate_path(path, ValidationOptions(**options)).to_dict()  # type: ignore[arg-type]


def only_error(document: dict) -> dict:
    assert document["valid"] is False
    assert len(document["errors"]) == 1, document["errors"]
    return document["errors"][0]


def test_utf8_bom_is_accepted_and_noted(tmp_path: Path) -> None:
    document = validate_bytes(tmp_path, b"\xef\xbb\xbf" + jsonl())
    assert document["valid"]
    assert document["notes"] == [{"line": None, "code": "encoding.bom", "message": document["notes"][0]["message"]}]
    assert document["examples"] == BASE


def test_crlf_and_blank_lines_are_fine(tmp_path: Path) -> None:
    data = b"\r\n" + jsonl().replace(b"\n", b"\r\n\r\n") + b"   \r\n"
    document = validate_bytes(tmp_path, data)
    assert document["valid"]
    assert document["counts"] == {}
    assert document["stats"]["blank_lines"] == BASE + 2
    assert document["examples"] == BASE


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        ("utf-16", "UTF-16LE text with a byte-order mark"),
        ("utf-16-le", "UTF-16LE text without a byte-order mark"),
        ("utf-16-be", "UTF-16BE text without a byte-order mark"),
        ("utf-32", "UTF-32LE text with a byte-order mark"),
        ("utf-32-be", "UTF-32BE text without a byte-order mark"),
    ],
)
def test_utf16_and_utf32_stop_with_one_error(tmp_path: Path, codec: str, expected: str) -> None:
    document = validate_bytes(tmp_path, jsonl().decode().encode(codec))
    error = only_error(document)
    assert error["code"] == "encoding.utf16"
    assert error["line"] is None
    assert expected in error["message"]
    assert "iconv" in error["message"]
    assert document["complete"] is False
    assert document["counts"] == {"encoding.utf16": 1}


def zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.jsonl", data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (gzip.compress, "this looks like a gzip file; upload the uncompressed .jsonl"),
        (zipped, "this looks like a zip archive"),
        (lambda data: b"PAR1\x15\x04\x15\x00" + data[:100] + b"PAR1", "this looks like a Parquet file"),
        (lambda data: data[:50] + b"\x00\x01\x02\x00" * 10 + data, "contains NUL bytes"),
    ],
    ids=["gzip", "zip", "parquet", "nul-bytes"],
)
def test_binary_files_stop_with_one_error(tmp_path: Path, make, expected: str) -> None:
    error = only_error(validate_bytes(tmp_path, make(jsonl())))
    assert error["code"] == "file.binary"
    assert error["line"] is None
    assert expected in error["message"]


def test_binary_stops_reading_early() -> None:
    served = 0

    def chunks() -> Iterator[bytes]:
        nonlocal served
        yield gzip.compress(jsonl())
        for _ in range(10_000):
            served += 1
            yield b"\x00" * 65536

    report = validate_chunks(chunks(), ValidationOptions(), source="big.gz")
    assert report.counts == {"file.binary": 1}
    assert served < 100  # a few read-ahead chunks, not the 650 MB behind them
    assert report.bytes_read < 100 * 65536


def test_invalid_utf8_is_reported_per_line(tmp_path: Path) -> None:
    data = jsonl().split(b"\n")
    data[3] = data[3].replace(b"Question", b"Qu\xe9stion", 1)
    document = validate_bytes(tmp_path, b"\n".join(data))
    error = only_error(document)
    assert error == {
        "line": 4,
        "code": "encoding.invalid_utf8",
        "message": error["message"],
    }
    assert error["message"].startswith("byte 0xE9 at column")
    assert document["complete"] is True


def test_a_pretty_printed_array_stops_with_the_jq_hint(tmp_path: Path) -> None:
    data = json.dumps(rows_with({}), indent=2).encode()
    error = only_error(validate_bytes(tmp_path, data))
    assert error == {"line": None, "code": "json.array", "message": error["message"]}
    assert "jq -c '.[]'" in error["message"]


def test_an_array_with_one_object_per_line_stops_with_the_jq_hint(tmp_path: Path) -> None:
    data = b"[" + b",\n".join(encode(line) for line in rows_with({})) + b"]\n"
    assert only_error(validate_bytes(tmp_path, data))["code"] == "json.array"


def test_a_one_line_array_is_not_an_object(tmp_path: Path) -> None:
    document = validate_bytes(tmp_path, json.dumps(rows_with({})).encode())
    error = next(e for e in document["errors"] if e["code"] == "json.not_object")
    assert error["line"] == 1
    assert "jq -c '.[]'" in error["message"]


def test_pretty_printed_objects_stop_with_the_jq_hint(tmp_path: Path) -> None:
    data = "\n".join(json.dumps(line, indent=2) for line in rows_with({})).encode()
    error = only_error(validate_bytes(tmp_path, data))
    assert error == {"line": None, "code": "json.pretty_printed", "message": error["message"]}
    assert "jq -c ." in error["message"]


def test_a_pretty_printed_object_in_the_middle_gets_a_hint(tmp_path: Path) -> None:
    lines = rows_with({})
    data = jsonl(lines[:5]) + json.dumps(lines[5], indent=2).encode() + b"\n" + jsonl(lines[6:])
    document = validate_bytes(tmp_path, data)
    invalid = [e for e in document["errors"] if e["code"] == "json.invalid"]
    assert invalid[0]["line"] == 6
    assert "pretty-printed" in invalid[1]["message"]
    assert document["complete"] is True


def test_over_long_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    long = row(4, messages=[{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}])
    path = write(tmp_path, rows_with({4: long}))
    data = path.read_bytes()
    pieces = [data[i : i + 64] for i in range(0, len(data), 64)]  # the long line spans many chunks
    report = validate_chunks(pieces, ValidationOptions(max_line_bytes=1000), source="x")
    assert lines_of(report, "line.too_long") == [4]
    assert report.errors[0].message.startswith("the line is 5,")
    assert report.examples == BASE
    assert report.stats["tokens"]["counted"] == BASE - 1


def test_a_file_without_newlines_is_one_over_long_line() -> None:
    report = validate_chunks((b"x" * 4096 for _ in range(100)), ValidationOptions(max_line_bytes=10_000), source="x")
    assert report.counts["line.too_long"] == 1
    assert report.lines == 1


# iter_lines ------------------------------------------------------------------------------

TEXT = b"\xef\xbb\xbffirst\r\nsecond\n\n  \r\nlast without newline"
EXPECTED = [(1, b"first"), (2, b"second"), (3, b""), (4, b"  "), (5, b"last without newline")]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 1000])
def test_iter_lines_frames_the_same_way_for_any_chunking(size: int) -> None:
    chunks = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert list(iter_lines(chunks)) == EXPECTED


def test_iter_lines_keeps_a_bom_after_line_one() -> None:
    assert list(iter_lines([b"a\n\xef\xbb\xbfb\n"])) == [(1, b"a"), (2, b"\xef\xbb\xbfb")]


def test_iter_lines_ignores_empty_chunks_and_a_final_newline() -> None:
    assert list(iter_lines([b"", b"a\n", b"", b"b\n", b""])) == [(1, b"a"), (2, b"b")]
    assert list(iter_lines([])) == []


def test_iter_lines_raises_on_an_over_long_line_without_a_handler() -> None:
    lines = iter_lines([b"ok\n", b"x" * 50, b"x" * 50, b"\nafter\n"], max_line_bytes=60)
    assert next(lines) == (1, b"ok")
    with pytest.raises(LineTooLongError) as raised:
        next(lines)
    assert (raised.value.line, raised.value.size) == (2, 100)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_iter_lines_skips_over_long_lines_with_a_handler(size: int) -> None:
    data = b"ok\n" + b"x" * 150 + b"\nafter\n" + b"y" * 70
    seen: list[tuple[int, int]] = []
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    lines = list(iter_lines(chunks, max_line_bytes=60, on_too_long=lambda n, s: seen.append((n, s))))
    assert lines == [(1, b"ok"), (3, b"after")]
    assert [number for number, _ in seen] == [2, 4]
    assert seen[1][1] == 70
