"""The pass over the lines on several cores, for big files: same findings, same report, less wall time.

Parsing and checking cost ~45 us per ultrachat example in one interpreter, so a gigabyte takes
seconds on one core. Here the calling process frames the stream into lines (the read-ahead
thread reads and hashes it) and hands blocks of ~2 MB of lines to worker processes; each runs
the very same :class:`LineScanner` on its block and sends back its partial :class:`Scan`, which
is merged in file order, so the report is identical to the one-core pass.

The workers are forked before the read-ahead thread starts, so they inherit the options, the
tokenizer and Python's hash secret (the duplicate checks compare per-process ``hash()``
digests). At most two blocks per worker are in flight, which bounds memory. The first block is
checked in the calling process: only the first line can show that a file is not JSON Lines at
all, and then nothing is sent anywhere.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.pool import AsyncResult, Pool

from shared.validation.lines import iter_lines
from shared.validation.options import ValidationOptions
from shared.validation.report import IssueLog
from shared.validation.scan import LineScanner, Scan
from shared.validation.tokens import ContentCounter

BLOCK_BYTES = 2 * 1024 * 1024
Block = list[tuple[int, bytes | int]]  # a line, or the size of one too long to keep

_worker: tuple[ValidationOptions, ContentCounter | None] | None = None  # set in each forked worker


def start_workers(options: ValidationOptions, counter: ContentCounter | None, workers: int) -> Pool:
    """Fork the workers now, before any thread exists in this process."""
    return multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=(options, counter))


def scan_parallel(
    chunks: Iterable[bytes], options: ValidationOptions, counter: ContentCounter | None, pool: Pool, workers: int
) -> Scan:
    """Check every line of ``chunks``: the first block here, the rest in ``pool``, merged in order."""
    head = LineScanner(options, counter, at_start=True)
    blocks = _blocks(chunks, options)
    first = next(blocks, None)
    if first is None or not head.feed(first):
        return head.result
    pending: deque[AsyncResult[Scan]] = deque()
    for block in blocks:
        pending.append(pool.apply_async(_scan_block, (block,)))
        if len(pending) >= 2 * workers:
            _merge(head.result, pending.popleft().get(), options)
    while pending:
        _merge(head.result, pending.popleft().get(), options)
    return head.result


def _blocks(chunks: Iterable[bytes], options: ValidationOptions) -> Iterator[Block]:
    """Lines in blocks of about BLOCK_BYTES, in file order; a too-long line is its size, in its place."""
    too_long: list[tuple[int, int]] = []
    block: Block = []
    size = 0
    lines = iter_lines(
        chunks, max_line_bytes=options.max_line_bytes, on_too_long=lambda number, n: too_long.append((number, n))
    )
    for number, raw in lines:
        if too_long:  # reported by iter_lines before this line was yielded: it comes first
            block.extend(too_long)
            too_long.clear()
        block.append((number, raw))
        size += len(raw)
        if size >= BLOCK_BYTES:
            yield block
            block, size = [], 0
    block.extend(too_long)
    if block:
        yield block


def _scan_block(block: Block) -> Scan:
    if _worker is None:
        raise RuntimeError("_scan_block runs only in a worker started by start_workers")
    options, counter = _worker
    scanner = LineScanner(options, counter, at_start=False)
    scanner.feed(block)
    return scanner.result


def _init(options: ValidationOptions, counter: ContentCounter | None) -> None:
    global _worker  # noqa: PLW0603 - one per worker process
    _worker = (options, counter)


def _merge(into: Scan, part: Scan, options: ValidationOptions) -> None:
    """Add a later block's findings as if the same scanner had gone on reading."""
    _merge_log(into.log, part.log)
    into.records.extend(part.records)
    room = options.keep_examples - len(into.samples)
    into.samples.extend(part.samples[: max(room, 0)])
    into.blank += part.blank
    into.examples += part.examples


def _merge_log(into: IssueLog, part: IssueLog) -> None:
    kept: dict[str, int] = {}
    for issue in part.kept:
        kept[issue.code] = kept.get(issue.code, 0) + 1
        seen = into.counts.get(issue.code, 0) + 1
        into.counts[issue.code] = seen
        if seen <= into.cap:
            into.kept.append(issue)
    for code, count in part.counts.items():
        into.counts[code] = into.counts.get(code, 0) + count - kept.get(code, 0)
    into.errors += part.errors
