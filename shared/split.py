"""Deterministic train/test split of a validated dataset, streamed blob to blob.

Each example's side is decided by a hash of its conversation, not by its position or a
random draw, so the same content always splits the same way (a re-upload is the same run)
and identical conversations land on the same side (no train/test leakage). The test split
is the ``k`` examples with the smallest hashes, so even a 10-example file gets a test
example; finding the cut-off takes one extra streaming pass and 8 bytes per example.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from shared.validation import iter_lines

Chunks = Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class SplitCounts:
    train: int
    test: int


def example_key(line: bytes) -> int:
    """64-bit hash of an example's conversation (canonical JSON of its messages)."""
    messages = orjson.loads(line).get("messages")
    canonical = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")


def _examples(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for _, line in iter_lines(chunks):
        if line.strip():
            yield line


def holdout_size(examples: int, fraction: float) -> int:
    """How many examples the test split gets: at least one, and never all of them."""
    return min(max(1, math.floor(examples * fraction)), examples - 1)


def cutoff(chunks: Iterable[bytes], fraction: float) -> int:
    """The largest key that still goes to the test split."""
    keys = np.fromiter((example_key(line) for line in _examples(chunks)), dtype=np.uint64)
    if len(keys) < 2:
        raise ValueError("a dataset needs at least two examples to split")
    k = holdout_size(len(keys), fraction)
    return int(np.partition(keys, k - 1)[k - 1])


def split(
    chunks: Chunks, fraction: float, train: Callable[[bytes], None], test: Callable[[bytes], None]
) -> SplitCounts:
    """Stream the examples of ``chunks()`` to ``train``/``test`` (one JSON line each, newline-terminated).

    ``chunks`` is called twice (cut-off pass, then writing pass), so it must re-open the source.
    """
    limit = cutoff(chunks(), fraction)
    counts = {"train": 0, "test": 0}
    for line in _examples(chunks()):
        side = "test" if example_key(line) <= limit else "train"
        (test if side == "test" else train)(line + b"\n")
        counts[side] += 1
    return SplitCounts(**counts)
