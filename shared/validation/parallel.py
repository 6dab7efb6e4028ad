"""The pass over a local file's lines on several cores: same findings, same report, less wall time.

Parsing and checking cost ~45 us per ultrachat example in one interpreter, so a gigabyte takes
seconds on one core. Here the file is cut into ranges of ~``BLOCK_BYTES`` that begin at line
starts, and each worker process reads its own range straight from the file, frames its lines and
runs the very same :class:`LineScanner` on them, numbering from 1; each partial :class:`Scan` is
shifted to its place and merged in file order, so the report is the one-core pass's. Two offsets
go to a worker and only the compact findings come back: no line crosses a pipe. The first task
of all hashes the whole file (the run's identity), in a worker too.

A range ends where the next begins: at the first line start at least ``BLOCK_BYTES`` after its
own start. A line longer than that, even one longer than ``max_line_bytes``, so lies whole in one
range, where ``iter_lines`` skips it chunk by chunk and reports it in its place. Finding the cuts
reads a few bytes at each, in order, so a file without newlines is read once, not once per block.

The workers are forked first, before the options are known (the calling process reads the
settings while the file is hashed); they inherit Python's hash secret (the duplicate checks
compare per-process ``hash()`` digests) and get the options with each range, and a worker loads
the tokenizer, if any, on its first range. The first ranges are checked in the calling process
until the first non-blank line has been seen: only it can show that a file is not JSON Lines at
all, and then no range is sent anywhere.
"""

from __future__ import annotations

import faulthandler
import functools
import hashlib
import itertools
import mmap
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import TypeVar

from shared.validation.lines import iter_lines
from shared.validation.options import ValidationOptions
from shared.validation.reading import CHUNK_SIZE
from shared.validation.report import IssueLog, Sample
from shared.validation.scan import LineScanner, Scan
from shared.validation.tokens import ContentCounter, load_counter

# 16 MiB ranges, 64 per GB: with 4 MiB ones the pool's hand-offs (a pickle, a pipe and a wake-up
# each way, a fresh scanner) cost the calling process ~0.25 s of CPU per GB more and the
# command ~8% of its wall time; the last range leaves one core idle for at most ~0.08 s.
BLOCK_BYTES = 16 * 1024 * 1024
# The first range is checked here, before any task is sent, while the workers wait: keep it short.
HEAD_BYTES = 64 * 1024
_FIND_BYTES = 64 * 1024  # read this much at a time when looking for the newline before a cut
# A range is read in pieces of this size. With 1 MiB pieces, glibc handed each freed one back to
# the kernel and the next faulted its pages in again: ~115k minor faults and ~0.3 s of system
# time per GB across the workers. Pieces of 256 KiB stay in the heap (a few hundred faults).
READ_BYTES = 256 * 1024
# The hashing worker maps this much of the file at a time (a multiple of mmap.ALLOCATIONGRANULARITY).
HASH_WINDOW_BYTES = 16 * 1024 * 1024
# How often the calling process, waiting for a worker's answer, checks that every worker still runs.
WATCH_S = 0.5

Task = tuple[str, int, int, ValidationOptions]  # path, start, end, options
_T = TypeVar("_T")


class FileShrankError(OSError):
    """The file was cut short while it was being validated: its report would describe no file."""


class WorkerLostError(OSError):
    """A worker process ended without answering (killed for memory, say)."""


class WorkerPool:
    """The forked pool and the processes it started, so that a worker that dies is noticed.

    A ``multiprocessing.Pool`` replaces a worker that dies, but the task it held is never
    answered: waiting for it would hang. The hashing worker dies of SIGBUS when the file is
    cut short under its mapping; a scanning one when the kernel kills it for memory, say.
    """

    def __init__(self, workers: int) -> None:
        before = set(multiprocessing.active_children())
        self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_leave_signals_to_the_parent)
        self._processes = [child for child in multiprocessing.active_children() if child not in before]

    def wait(self, get: Callable[[float], _T], path: Path, size: int) -> _T:
        """``get(timeout)``'s answer, checking between timeouts that no worker has died."""
        while True:
            try:
                return get(WATCH_S)
            except multiprocessing.TimeoutError:
                self._check(path, size)

    def _check(self, path: Path, size: int) -> None:
        for process in self._processes:
            if not process.is_alive():
                if (now := path.stat().st_size) < size:
                    raise FileShrankError(_shrank(now))
                code = process.exitcode or 0
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise WorkerLostError(f"a validation worker process ended ({how}) before it had answered")

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _leave_signals_to_the_parent() -> None:
    """A worker's end is the calling process's to report, in one line: no traceback, no crash dump.

    Ctrl-C: the terminal sends it to the whole process group; the calling process stops on it (the
    CLI says "interrupted") and terminates the pool, so a worker ignores it instead of printing a
    traceback. SIGBUS: the hashing worker dies of it when the file is cut short under its mapping,
    which the calling process reports; faulthandler, when on (PYTHONFAULTHANDLER, -X faulthandler,
    pytest), would add a "Fatal Python error" dump.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.disable()


def start_workers(workers: int) -> WorkerPool:
    """Fork the workers now, before any thread exists in this process."""
    return WorkerPool(workers)


def start_hashing(workers: WorkerPool, path: Path, size: int) -> AsyncResult[str]:
    """The SHA-256 of the first ``size`` bytes of ``path``: the run identity (all of them, or an error).

    Put first in the queue, so a worker starts on it at once. A worker process, not a thread:
    a thread here loses the GIL race to any Python code running beside it (the settings' imports)
    and waits a switch interval, 5 ms, for every 1 ms megabyte it hashes; a core sat half idle.
    """
    return workers.pool.apply_async(_hash_range, (str(path), size))


def _hash_range(path: str, size: int) -> str:
    """Hash through a read-only mapping: reading into a buffer cost ~0.2 s of system time per GB.

    A page the file no longer has kills this process with SIGBUS; :class:`WorkerPool` notices.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:  # noqa: PTH123 - a plain fd to map
        if (now := os.fstat(file.fileno()).st_size) < size:
            raise FileShrankError(_shrank(now))
        # A window at a time: pages of a mapping count in the resident set while it lasts.
        for at in range(0, size, HASH_WINDOW_BYTES):
            length = min(HASH_WINDOW_BYTES, size - at)
            with mmap.mmap(file.fileno(), length, prot=mmap.PROT_READ, offset=at) as mapped, memoryview(mapped) as view:
                for piece in range(0, length, CHUNK_SIZE):
                    digest.update(view[piece : piece + CHUNK_SIZE])
    return digest.hexdigest()


def _shrank(now: int) -> str:
    return f"the file shrank to {now:,} bytes while it was validated; validate it again once it is written"


def scan_file(
    path: Path,
    size: int,
    options: ValidationOptions,
    counter: ContentCounter | None,
    workers: WorkerPool,
    *,
    progress: Callable[[int], None] | None = None,
) -> Scan:
    """Check every line of the first ``size`` bytes of ``path``: the first ranges here, the rest in ``workers``.

    ``progress`` is told how many bytes have been checked, in file order, after each range.
    """
    with path.open("rb") as file:
        cuts = _cuts(file.fileno(), size, BLOCK_BYTES, first=min(HEAD_BYTES, BLOCK_BYTES))
        ranges = list(itertools.pairwise(cuts))
        head = LineScanner(options, counter, at_start=True)
        result = head.result
        taken = 0
        while taken < len(ranges) and head.at_start:  # the first non-blank line decides: JSON Lines at all?
            start, end = ranges[taken]
            if not head.feed(_shifted(_read(file.fileno(), start, end), result.lines, head, options, start == 0)):
                return result
            taken += 1
            if progress is not None:
                progress(end)
    tasks: list[Task] = [(str(path), start, end, options) for start, end in ranges[taken:]]
    parts = workers.pool.imap(_scan_range, tasks)
    for _, _, end, _ in tasks:
        _merge(result, workers.wait(parts.next, path, size), result.lines, options)
        if progress is not None:
            progress(end)
    return result


def _cuts(fd: int, size: int, block: int, *, first: int | None = None) -> list[int]:
    """Range boundaries: 0, then the first line start at least ``block`` bytes after the previous, then ``size``.

    ``first``: the first range's ``block``, if it differs.
    """
    cuts = [0]
    step = block if first is None else first
    while cuts[-1] + step < size:
        cut = _line_start(fd, cuts[-1] + step, size)
        step = block
        if cut >= size:
            break
        cuts.append(cut)
    cuts.append(size)
    return cuts


def _line_start(fd: int, offset: int, size: int) -> int:
    """The first offset at or after ``offset`` where a line begins (just after a newline), or ``size``."""
    at = offset - 1  # the byte before ``offset`` may be the newline that makes it a line start
    while at < size:
        piece = os.pread(fd, min(_FIND_BYTES, size - at), at)
        if not piece:
            break
        newline = piece.find(b"\n")
        if newline >= 0:
            return at + newline + 1
        at += len(piece)
    return size


def _read(fd: int, start: int, end: int) -> Iterator[bytes]:
    """The bytes from ``start`` to ``end``, in chunks, without moving the file's position."""
    while start < end:
        chunk = os.pread(fd, min(READ_BYTES, end - start), start)
        if not chunk:  # what was checked would not be the file the identity names
            raise FileShrankError(_shrank(os.fstat(fd).st_size))
        start += len(chunk)
        yield chunk


def _shifted(
    chunks: Iterator[bytes], offset: int, head: LineScanner, options: ValidationOptions, file_start: bool
) -> Iterator[tuple[int, bytes]]:
    """The lines of ``chunks`` numbered after the ``offset`` lines before them, too-long ones reported to ``head``."""
    lines = iter_lines(
        chunks,
        max_line_bytes=options.max_line_bytes,
        on_too_long=lambda number, size: head.too_long(number + offset, size),
        file_start=file_start,
    )
    for number, raw in lines:
        yield number + offset, raw


def _scan_range(task: Task) -> Scan:
    path, start, end, options = task
    scanner = LineScanner(options, _counter(options.tokenizer), at_start=False)
    with open(path, "rb") as file:  # noqa: PTH123 - a plain fd for pread
        lines = iter_lines(
            _read(file.fileno(), start, end),
            max_line_bytes=options.max_line_bytes,
            on_too_long=scanner.too_long,
            file_start=start == 0,
        )
        scanner.feed(lines)
    return scanner.result


@functools.cache
def _counter(tokenizer: str | None) -> ContentCounter | None:
    """A worker's tokenizer, loaded on its first range (the calling process has checked that it loads)."""
    return load_counter(tokenizer)


def _merge(into: Scan, part: Scan, offset: int, options: ValidationOptions) -> None:
    """Add a later range's findings, its line numbers moved by ``offset``, as if one scanner read on."""
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
