"""What is computed from the per-example records once the whole file is read.

Everything here is vectorised over the compact arrays of ``records``: sorting 64-bit
digests finds duplicates in a fraction of a second for millions of examples, and the
token percentiles are exact (numpy's default linear interpolation, like pandas'
``quantile``), not estimated from a sample or a sketch.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from shared.validation.records import NO_DIGEST, ExampleRecords


def summarize(records: ExampleRecords, max_seq_length: int, epochs: int, exact: bool) -> dict[str, Any]:
    """The statistics section of the report (everything but the line counts)."""
    tokens = np.frombuffer(records.tokens, dtype=np.uint32).astype(np.int64)
    summary: dict[str, Any] = {"exact": exact, "counted": len(tokens), "max_seq_length": max_seq_length}
    if len(tokens):
        p5, p50, p95 = np.percentile(tokens, [5, 50, 95])
        summary |= {
            "min": int(tokens.min()),
            "mean": float(tokens.mean()),
            "p5": float(p5),
            "p50": float(p50),
            "p95": float(p95),
            "max": int(tokens.max()),
            "total": int(tokens.sum()),
            "over_max_seq_length": int((tokens > max_seq_length).sum()),
            "billed_per_epoch": int(np.minimum(tokens, max_seq_length).sum()),
        }
    else:
        summary |= dict.fromkeys(("min", "mean", "p5", "p50", "p95", "max"))
        summary |= {"total": 0, "over_max_seq_length": 0, "billed_per_epoch": 0}
    return {
        "messages_per_example": histogram_summary(records.messages),
        "assistant_turns_per_example": histogram_summary(records.assistant_turns),
        "tokens": summary,
        "epochs": epochs,
        # OpenAI's formula: every epoch bills each example up to the sequence limit.
        "billed_tokens": epochs * summary["billed_per_epoch"],
    }


def histogram_summary(histogram: Counter[int]) -> dict[str, Any]:
    """min/mean/p50/max of small integers kept as value -> count (exact, constant memory)."""
    total = histogram.total()
    if not total:
        return {"min": None, "mean": None, "p50": None, "max": None}
    values = np.array(sorted(histogram), dtype=np.int64)
    counts = np.array([histogram[value] for value in values], dtype=np.int64)
    ends = np.cumsum(counts)  # ends[i]: how many values are <= values[i]
    middle = (total - 1) / 2  # the median's position in the expanded, sorted data

    def at(position: int) -> int:
        return int(values[np.searchsorted(ends, position, side="right")])

    low, high = at(math.floor(middle)), at(math.ceil(middle))
    return {
        "min": int(values[0]),
        "mean": float((values * counts).sum() / total),
        "p50": float(low + (high - low) * (middle - math.floor(middle))),  # as np.percentile(data, 50)
        "max": int(values[-1]),
    }


def duplicate_conversations(records: ExampleRecords) -> Iterator[tuple[int, int]]:
    """``(line, first_line)`` for every example whose conversation appeared on an earlier line."""
    return _duplicates(records.conversations, records.lines)


def duplicate_prompt_ids(records: ExampleRecords) -> Iterator[tuple[int, int]]:
    """``(line, first_line)`` for every prompt_id already used on an earlier line."""
    return _duplicates(records.prompt_ids, records.lines, skip=NO_DIGEST)


def _duplicates(digests: array, lines: array, skip: int | None = None) -> Iterator[tuple[int, int]]:
    """Equal digests found by a stable sort; yields ``(line, first_line)`` in line order."""
    keys = np.frombuffer(digests, dtype=np.int64)
    line_numbers = np.frombuffer(lines, dtype=np.uint32)
    if skip is not None:
        keep = keys != skip
        keys, line_numbers = keys[keep], line_numbers[keep]
    if len(keys) < 2:
        return
    order = np.argsort(keys, kind="stable")  # equal keys stay in file order: the first is the original
    ordered = keys[order]
    repeat = np.zeros(len(ordered), dtype=bool)
    repeat[1:] = ordered[1:] == ordered[:-1]
    if not repeat.any():
        return
    # For each position in sorted order, where its run of equal keys starts.
    run_start = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(ordered))))
    positions = np.flatnonzero(repeat)
    duplicate_lines = line_numbers[order[positions]]
    first_lines = line_numbers[order[run_start[positions]]]
    for index in np.argsort(duplicate_lines, kind="stable"):
        yield int(duplicate_lines[index]), int(first_lines[index])
