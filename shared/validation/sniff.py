"""Recognise what a file is from its first bytes, before reading it as JSON Lines.

A gzip, a Parquet file or a UTF-16 export would otherwise produce one confusing JSON error
per line; naming the format instead tells the uploader exactly what to do, and validation
can stop after the first few kilobytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.validation.codes import ENCODING_BOM, ENCODING_UTF16, FILE_BINARY
from shared.validation.lines import UTF8_BOM

SNIFF_BYTES = 4096

_UNCOMPRESSED = "upload the uncompressed .jsonl"
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", f"this looks like a gzip file; {_UNCOMPRESSED} (gunzip it first)"),
    (b"PK\x03\x04", f"this looks like a zip archive (or an .xlsx/.docx); {_UNCOMPRESSED}"),
    (b"PK\x05\x06", f"this looks like an empty zip archive; {_UNCOMPRESSED}"),
    (b"BZh", f"this looks like a bzip2 file; {_UNCOMPRESSED}"),
    (b"\xfd7zXZ\x00", f"this looks like an xz file; {_UNCOMPRESSED}"),
    (b"\x28\xb5\x2f\xfd", f"this looks like a zstd file; {_UNCOMPRESSED}"),
    (b"7z\xbc\xaf\x27\x1c", f"this looks like a 7-Zip archive; {_UNCOMPRESSED}"),
    (
        b"PAR1",
        "this looks like a Parquet file; convert it to JSON Lines first, e.g. "
        "pandas.read_parquet(src).to_json(dst, orient='records', lines=True, force_ascii=False)",
    ),
    (b"ARROW1", "this looks like an Arrow/Feather file; convert it to JSON Lines first"),
    (b"SQLite format 3\x00", "this looks like an SQLite database, not a JSON Lines file"),
    (b"%PDF", "this looks like a PDF document, not a JSON Lines file"),
)
# UTF-32 first: its little-endian BOM starts with the UTF-16 one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)


@dataclass(frozen=True)
class Finding:
    code: str
    message: str

    @property
    def fatal(self) -> bool:
        """Whether reading on would only repeat the same problem on every line."""
        return self.code != ENCODING_BOM


def sniff(head: bytes) -> Finding | None:
    """What the first bytes of a file say about it, if anything worth reporting."""
    for magic, message in _MAGIC:
        if head.startswith(magic):
            return Finding(FILE_BINARY, message)
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return _utf16(codec, "with a byte-order mark")
    if head.startswith(UTF8_BOM):
        return Finding(ENCODING_BOM, "the file starts with a UTF-8 byte-order mark; it is accepted and skipped")
    if b"\x00" in head:
        return _nul_bytes(head)
    return None


def _nul_bytes(head: bytes) -> Finding:
    """JSON text never contains NUL bytes: they mean UTF-16/32 without a BOM, or binary data.

    ASCII-heavy text in UTF-16 has a NUL in every other byte (odd positions when
    little-endian, even when big-endian); UTF-32 has three in every four.
    """
    even, odd = head[0::2], head[1::2]
    quads = [head[i::4] for i in range(4)]
    if _mostly_nul(quads[1:]) and _rarely_nul(quads[0]):
        return _utf16("UTF-32LE", "without a byte-order mark")
    if _mostly_nul(quads[:3]) and _rarely_nul(quads[3]):
        return _utf16("UTF-32BE", "without a byte-order mark")
    if _mostly_nul([odd]) and _rarely_nul(even):
        return _utf16("UTF-16LE", "without a byte-order mark")
    if _mostly_nul([even]) and _rarely_nul(odd):
        return _utf16("UTF-16BE", "without a byte-order mark")
    return Finding(FILE_BINARY, "the file contains NUL bytes, so it is binary data, not UTF-8 JSON Lines text")


def _mostly_nul(parts: list[bytes]) -> bool:
    return all(part and part.count(0) > 0.6 * len(part) for part in parts)


def _rarely_nul(part: bytes) -> bool:
    return part.count(0) < 0.2 * len(part)


def _utf16(codec: str, how: str) -> Finding:
    return Finding(
        ENCODING_UTF16,
        f"this file looks like {codec} text {how}; save it as UTF-8, "
        f"e.g. iconv -f {codec} -t UTF-8 in.jsonl > out.jsonl",
    )
