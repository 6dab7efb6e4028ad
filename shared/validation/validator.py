"""Validation entry points: bytes in, a Report out, in one pass and constant memory.

On one core a helper thread reads and hashes the chunks (the hash is the run identity, so it
covers exactly what was validated); on many, a worker process hashes the file while the others
check its ranges. The head is sniffed for binary formats and foreign encodings; every line is
decoded once (msgspec for well-formed lines, orjson for the rest) and checked; whole-file
checks (duplicates, dataset size) run at the end on the compact per-example records.
"""

from __future__ import annotations

import importlib
import itertools
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from shared.validation.codes import DATASET_FEW, DATASET_TOO_FEW, EXAMPLE_DUPLICATE, PROMPT_ID_DUPLICATE
from shared.validation.options import ValidationOptions
from shared.validation.reading import CHUNK_SIZE, ReadAhead
from shared.validation.report import IssueLog, Report
from shared.validation.scan import Scan, scan
from shared.validation.sniff import SNIFF_BYTES, Finding, sniff
from shared.validation.tokens import load_counter

# OpenAI and Azure OpenAI refuse training files with fewer examples than this.
MIN_EXAMPLES = 10
# Forking workers costs ~10 ms each and pays off after a few MB. Beyond four, the one process that
# reads and hashes the file becomes the bottleneck.
PARALLEL_FROM_BYTES = 64 * 1024 * 1024
MAX_WORKERS = 4

Progress = Callable[[int], None]
# The options, or a function that returns them (the CLI's reads the app settings, ~0.25 s of imports).
OptionsSource = ValidationOptions | Callable[[], ValidationOptions]


def validate_path(
    path: str | Path, options: OptionsSource, *, progress: Progress | None = None, workers: int | None = None
) -> Report:
    """Validate a local file, streamed in 1 MiB chunks; big files on every core (up to ``MAX_WORKERS``).

    With more than one worker, the workers read the lines from the file themselves, and one of
    them reads it once more, first, to hash it: the same report as one core's, in less wall time.
    The hashing starts before ``options`` is called, so whatever that does (the CLI reads the
    settings) runs beside it instead of before it while a core idles.
    """
    path = Path(path)
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if workers is None:
            workers = min(MAX_WORKERS, os.cpu_count() or 1) if size >= PARALLEL_FROM_BYTES else 1
        chunks = iter(lambda: file.read(CHUNK_SIZE), b"")
        finding = sniff(os.pread(file.fileno(), SNIFF_BYTES, 0)) if workers > 1 else None
        if workers == 1 or (finding and finding.fatal):  # not JSON Lines text at all: a few kilobytes tell
            return validate_chunks(chunks, _chosen(options), source=str(path), progress=progress)
        # Imported here: the blob function validates on one core and need not load multiprocessing.
        from shared.validation.parallel import scan_file, start_hashing, start_workers

        pool = start_workers(workers)
        hashing = start_hashing(pool, path, size)  # first in the queue: a worker hashes while the options come
        try:
            chosen = _chosen(options)
            counter = load_counter(chosen.tokenizer)  # before any range is sent: a bad tokenizer fails fast
            importlib.import_module("shared.validation.stats")  # numpy, 0.09 s: here it overlaps the hashing
            result = scan_file(path, size, chosen, counter, pool, progress=progress)
            # The identity covers the whole file even when its first line stopped the pass: it must
            # not cover less than was checked, and the ranges were read beside it.
            sha256 = pool.wait(hashing.get, path, size)
        finally:
            pool.close()
    return _report(
        result,
        chosen,
        exact=counter is not None,
        source=str(path),
        sha256=sha256,
        size=size,
        finding=finding,
    )


def _chosen(options: OptionsSource) -> ValidationOptions:
    return options if isinstance(options, ValidationOptions) else options()


def validate_chunks(
    chunks: Iterable[bytes],
    options: ValidationOptions,
    *,
    source: str,
    progress: Progress | None = None,
    split_keys: array | None = None,
) -> Report:
    """Validate a dataset arriving as chunks of any size (e.g. a blob download's ``.chunks()``), on one core.

    ``progress`` is called with the number of bytes consumed so far after every chunk (as this
    thread takes them, not as the read-ahead thread reads them). ``split_keys``: an empty
    ``array("Q")`` that gets the split key of every example with a record, in file order (all of
    them when the report is valid), so that intake splits the upload without parsing it again.
    Raises ValueError for unusable options (a tokenizer that cannot be loaded) and whatever
    iterating ``chunks`` raises; everything about the data itself ends up in the report.
    """
    counter = load_counter(options.tokenizer)  # before reading: a bad tokenizer fails fast
    reader = ReadAhead(chunks)
    try:
        head, stream = _peek(_reported(reader, progress), SNIFF_BYTES)
        finding = sniff(head[:SNIFF_BYTES])
        if finding and finding.fatal:  # not JSON Lines text at all: reading on would add nothing
            result = Scan(IssueLog(options.samples_per_code), complete=False)
        else:
            result = scan(stream, options, counter, split_keys)
    finally:
        reader.close()  # stopped early or not, the hash now covers everything read
    return _report(
        result,
        options,
        exact=counter is not None,
        source=source,
        sha256=reader.sha256.hexdigest(),
        size=reader.size,
        finding=finding,
    )


def _report(
    result: Scan,
    options: ValidationOptions,
    *,
    exact: bool,
    source: str,
    sha256: str,
    size: int,
    finding: Finding | None,
) -> Report:
    """Run the whole-file checks and build the report."""
    from shared.validation.stats import summarize  # numpy: loaded only once there is something to sum up

    log = result.log
    if finding is not None:
        log.add(finding.code, None, finding.message)
    if result.complete:
        _whole_file_checks(log, result, options)
    stats = {"examples": result.examples, "blank_lines": result.blank} | summarize(
        result.records, options.max_seq_length, options.epochs, exact=exact
    )
    return Report(
        source=source,
        sha256=sha256,
        bytes_read=size,
        lines=result.lines,
        examples=result.examples,
        complete=result.complete,
        issues=tuple(log.kept),
        counts=dict(log.counts),
        stats=stats,
        options=options,
        samples=tuple(result.samples),
    )


def _whole_file_checks(log: IssueLog, result: Scan, options: ValidationOptions) -> None:
    from shared.validation.stats import duplicate_conversations, duplicate_prompt_ids

    for line, first in duplicate_conversations(result.records):
        log.add(EXAMPLE_DUPLICATE, line, f"same conversation as line {first:,}")
    for line, first in duplicate_prompt_ids(result.records):
        log.add(PROMPT_ID_DUPLICATE, line, f"prompt_id already used on line {first:,}")
    if result.examples < MIN_EXAMPLES:
        log.add(
            DATASET_TOO_FEW,
            None,
            f"{result.examples} examples; fine-tuning needs at least {MIN_EXAMPLES} "
            "(OpenAI and Azure OpenAI refuse fewer)",
        )
    elif result.examples < options.min_examples_warning:
        log.add(
            DATASET_FEW,
            None,
            f"{result.examples} examples; fewer than {options.min_examples_warning} rarely change a model's "
            "behaviour noticeably (OpenAI recommends starting with 50 to 100)",
        )


def _reported(chunks: Iterable[bytes], progress: Progress | None) -> Iterator[bytes]:
    """The chunks, telling ``progress`` how many bytes have been consumed so far."""
    if progress is None:
        yield from chunks
        return
    done = 0
    for chunk in chunks:
        done += len(chunk)
        progress(done)
        yield chunk


def _peek(stream: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """The first ``size`` bytes or more (whole chunks), and the stream with them put back."""
    pieces: list[bytes] = []
    have = 0
    for chunk in stream:
        pieces.append(chunk)
        have += len(chunk)
        if have >= size:
            break
    head = b"".join(pieces)
    return head, itertools.chain((head,), stream)
