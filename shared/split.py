"""Deterministic train/test split of a validated dataset, streamed blob to blob.

Each example's side is decided by its split key (``shared.split_key``), a hash of its
conversation, not by its position or a random draw, so the same content always splits the
same way (a re-upload is the same run) and identical conversations land on the same side (no
train/test leakage). The test split is the ``k`` examples with the smallest keys, so even a
10-example file gets a test example. Finding the cut-off needs every key first, 8 bytes per
example: intake has validation collect them as it parses the upload, so the split itself is
one more read that frames lines and parses none; without them, one extra pass computes them.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from shared import split_key
from shared.validation import iter_lines

Chunks = Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class SplitCounts:
    train: int
    test: int


class SplitKeysMismatchError(RuntimeError):
    """The keys given do not match the examples read: validated and split bytes differ (a bug, never data)."""


def _examples(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for _, line in iter_lines(chunks):
        if line.strip():
            yield line


def holdout_size(examples: int, fraction: float) -> int:
    """How many examples the test split gets: at least one, and never all of them."""
    return min(max(1, math.floor(examples * fraction)), examples - 1)


def keys_of(chunks: Iterable[bytes]) -> array:
    """The split key of every example, in file order (the pass intake saves by collecting them in validation)."""
    return array("Q", (split_key.of_line(line) for line in _examples(chunks)))


def cutoff(keys: array, fraction: float) -> int:
    """The largest key that still goes to the test split."""
    if len(keys) < 2:
        raise ValueError("a dataset needs at least two examples to split")
    k = holdout_size(len(keys), fraction)
    return int(np.partition(np.frombuffer(keys, dtype=np.uint64), k - 1)[k - 1])


def split(
    chunks: Chunks,
    fraction: float,
    train: Callable[[bytes], None],
    test: Callable[[bytes], None],
    *,
    keys: array | None = None,
) -> SplitCounts:
    """Stream the examples of ``chunks()`` to ``train``/``test`` (one JSON line each, newline-terminated).

    ``keys``: every example's split key in file order, as validation collected them from the same
    bytes; without them ``chunks`` is called twice (keys, then writing), so it must re-open the source.
    """
    if keys is None:
        keys = keys_of(chunks())
    limit = cutoff(keys, fraction)
    counts = {"train": 0, "test": 0}
    for index, line in enumerate(_examples(chunks())):
        if index >= len(keys):
            raise SplitKeysMismatchError(f"{len(keys):,} split keys, but the source has more examples")
        side = "test" if keys[index] <= limit else "train"
        (test if side == "test" else train)(line + b"\n")
        counts[side] += 1
    if counts["train"] + counts["test"] != len(keys):
        raise SplitKeysMismatchError(f"{len(keys):,} split keys for {counts['train'] + counts['test']:,} examples")
    return SplitCounts(**counts)
