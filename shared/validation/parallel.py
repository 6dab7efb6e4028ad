"""The pass over the lines on several cores, for big files: same findings, same report, less wall time.

Parsing and checking cost ~45 us per ultrachat example in one interpreter, so a gigabyte takes
seconds on one core. Here the calling process only cuts the stream (which the read-ahead
thread reads and hashes) into blocks of ~2 MB that end at a newline; worker processes frame
the lines of a block and run the very same :class:`LineScanner` on them, numbering from 1; each
partial :class:`Scan` is shifted to its place and merged in file order, so the report is the
one-core pass's.

The workers are forked before the read-ahead thread starts, so they inherit the options, the
tokenizer and Python's hash secret (the duplicate checks compare per-process ``hash()``
digests). At most two blocks per worker are in flight, which bounds memory. The first block is
checked in the calling process: only the first line can show that a file is not JSON Lines at
all, and then nothing is sent anywhere. A line longer than ``max_line_bytes`` without a newline
in sight is skipped here, as ``iter_lines`` would, and reported in its place.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from multiprocessing.pool import AsyncResult, Pool

from shared.validation.lines import iter_lines
from shared.validation.options import ValidationOptions
from shared.validation.report import IssueLog, Sample
from shared.validation.scan import LineScanner, Scan
from shared.validation.tokens import ContentCounter

BLOCK_BYTES = 2 * 1024 * 1024
Part = tuple[Scan, int]  # a block's findings, numbered from 1, and how many lines it had

_worker: tuple[ValidationOptions, ContentCounter | None] | None = None  # set in each forked worker


def start_workers(options: ValidationOptions, counter: ContentCounter | None, workers: int) -> Pool:
    """Fork the workers now, before any thread exists in this process."""
    return multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=(options, counter))


def scan_parallel(
    chunks: Iterable[bytes], options: ValidationOptions, counter: ContentCounter | None, pool: Pool, workers: int
) -> Scan:
    """Check every line of ``chunks``: the blocks up to the first non-blank line here, the rest in ``pool``."""
    head = LineScanner(options, counter, at_start=True)
    result = head.result
    pending: deque[AsyncResult[Part]] = deque()
    done = 0  # lines before the next block

    def merge_next() -> None:
        nonlocal done
        part, count = pending.popleft().get()
        _merge(result, part, done, options)
        done += count

    for block in _blocks(chunks, options.max_line_bytes):
        if isinstance(block, int):  # a skipped line: its number is known once every earlier block is back
            while pending:
                merge_next()
            done += 1
            head.too_long(done, block)
        elif head.at_start:  # the first non-blank line decides whether this is JSON Lines at all
            if not head.feed(_shifted(block, done, head, options)):
                return result
            done += _line_count(block)
        else:
            pending.append(pool.apply_async(_scan_block, (block,)))
            if len(pending) >= 2 * workers:
                merge_next()
    while pending:
        merge_next()
    return result


def _shifted(block: bytes, offset: int, head: LineScanner, options: ValidationOptions) -> Iterator[tuple[int, bytes]]:
    """The block's lines numbered after the ``offset`` lines before it, too-long ones reported to ``head``."""
    lines = iter_lines(
        [block],
        max_line_bytes=options.max_line_bytes,
        on_too_long=lambda number, size: head.too_long(number + offset, size),
        file_start=offset == 0,
    )
    for number, raw in lines:
        yield number + offset, raw


def _blocks(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes | int]:
    """Blocks of whole lines, ~BLOCK_BYTES each; the size of a line too long to keep, in its place."""
    parts: list[bytes] = []
    size = 0
    skipping = 0  # bytes of a too-long line skipped so far, 0 when not skipping
    for chunk in chunks:
        rest = chunk
        if skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                skipping += len(chunk)
                continue
            yield skipping + newline
            skipping, rest = 0, chunk[newline + 1 :]
        parts.append(rest)
        size += len(rest)
        if size < BLOCK_BYTES:
            continue
        data = b"".join(parts)
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
            data = data[cut:]
        if len(data) > max_line_bytes:  # no newline for longer than any line may be: skip the rest of it
            skipping, data = len(data), b""
        parts, size = [data] if data else [], len(data)
    if skipping:
        yield skipping
    elif size:
        yield b"".join(parts)


def _line_count(block: bytes) -> int:
    return block.count(b"\n") + (not block.endswith(b"\n"))


def _scan_block(block: bytes) -> Part:
    if _worker is None:
        raise RuntimeError("_scan_block runs only in a worker started by start_workers")
    options, counter = _worker
    scanner = LineScanner(options, counter, at_start=False)
    scanner.feed(
        iter_lines([block], max_line_bytes=options.max_line_bytes, on_too_long=scanner.too_long, file_start=False)
    )
    return scanner.result, _line_count(block)


def _init(options: ValidationOptions, counter: ContentCounter | None) -> None:
    global _worker  # noqa: PLW0603 - one per worker process
    _worker = (options, counter)


def _merge(into: Scan, part: Scan, offset: int, options: ValidationOptions) -> None:
    """Add a later block's findings, its line numbers moved by ``offset``, as if one scanner read on."""
    _merge_log(into.log, part.log, offset)
    into.records.extend(part.records, line_offset=offset)
    room = max(options.keep_examples - len(into.samples), 0)
    into.samples.extend(Sample(s.line + offset, s.messages) for s in part.samples[:room])
    into.blank += part.blank
    into.examples += part.examples


def _merge_log(into: IssueLog, part: IssueLog, offset: int) -> None:
    kept: dict[str, int] = {}
    for issue in part.kept:
        kept[issue.code] = kept.get(issue.code, 0) + 1
        seen = into.counts.get(issue.code, 0) + 1
        into.counts[issue.code] = seen
        if seen <= into.cap:
            into.kept.append(replace(issue, line=None if issue.line is None else issue.line + offset))
    for code, count in part.counts.items():
        into.counts[code] = into.counts.get(code, 0) + count - kept.get(code, 0)
    into.errors += part.errors
