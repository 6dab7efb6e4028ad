"""Line framing of a byte stream: the one definition of "line N" that validation and splitting share.

Chunks can be any size and split lines (or a CRLF pair, or a BOM) anywhere, so lines are
re-assembled here. Memory stays bounded by the chunk size plus ``max_line_bytes``: a line
that grows past the limit is dropped piece by piece until its newline, never held whole,
so a file without newlines (a binary, a minified JSON array) cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

TooLong = Callable[[int, int], None]


class LineTooLongError(ValueError):
    """A line exceeded the limit and the caller gave no ``on_too_long`` handler."""

    def __init__(self, line: int, size: int) -> None:
        super().__init__(f"line {line} is {size:,} bytes, over the line-length limit")
        self.line = line
        self.size = size


def _raise_too_long(line: int, size: int) -> None:
    raise LineTooLongError(line, size)


def iter_lines(
    chunks: Iterable[bytes],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    on_too_long: TooLong | None = None,
    file_start: bool = True,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, line)``: 1-based, without the ``\\n`` or a ``\\r`` before it.

    A UTF-8 BOM at the start of line 1 is removed (only at the ``file_start``: a later part of a
    file numbers its lines from 1 too, but a BOM there is data). Blank lines are yielded (callers decide
    what a blank line means) and a last line without a newline counts. A line longer than
    ``max_line_bytes`` is not yielded: ``on_too_long(line_number, size)`` is called instead,
    or :class:`LineTooLongError` raised when no handler is given.
    """
    too_long = on_too_long or _raise_too_long
    number = 0
    pending: list[bytes] = []  # pieces of the line being assembled across chunks
    pending_size = 0
    skipping = False  # the current line is already over the limit: count it, keep nothing

    for chunk in chunks:
        newline = chunk.find(b"\n")
        if newline < 0:  # the current line goes on (or the chunk is empty)
            pending_size += len(chunk)
            if skipping or not chunk:
                continue
            if pending_size > max_line_bytes:
                skipping = True
                pending.clear()
            else:
                pending.append(chunk)
            continue

        # The chunk's first newline ends the line carried over from earlier chunks.
        number += 1
        size = pending_size + newline
        if skipping or size > max_line_bytes:
            too_long(number, size)
        else:
            line = b"".join((*pending, chunk[:newline])) if pending else chunk[:newline]
            yield number, _finish(line, number if file_start else 0)

        # Whole lines inside the chunk: the hot loop. bytes.find is a memchr; bytes.split
        # would be several times slower, as it scans byte by byte.
        find = chunk.find
        start = newline + 1
        while (newline := find(b"\n", start)) >= 0:
            number += 1
            if newline - start > max_line_bytes:
                too_long(number, newline - start)
            elif newline > start and chunk[newline - 1] == 13:  # CRLF
                yield number, chunk[start : newline - 1]
            else:
                yield number, chunk[start:newline]
            start = newline + 1

        pending_size = len(chunk) - start
        skipping = pending_size > max_line_bytes
        pending = [chunk[start:]] if pending_size and not skipping else []

    if pending or skipping:
        number += 1
        if skipping:
            too_long(number, pending_size)
        else:
            yield number, _finish(b"".join(pending), number if file_start else 0)


def _finish(line: bytes, number: int) -> bytes:
    """Tidy a line that ends a chunk's carry-over (once per chunk, so off the hot path)."""
    if number == 1 and line.startswith(UTF8_BOM):
        line = line[len(UTF8_BOM) :]
    return line[:-1] if line.endswith(b"\r") else line
