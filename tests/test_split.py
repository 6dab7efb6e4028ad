"""The deterministic split, on plain bytes."""

from __future__ import annotations

import json

import pytest

from shared.split import holdout_size, split
from tests.data import dataset, example, jsonl


def run_split(content: bytes, fraction: float, chunk: int = 7) -> tuple[list[bytes], list[bytes]]:
    train: list[bytes] = []
    test: list[bytes] = []

    def chunks():
        return (content[i : i + chunk] for i in range(0, len(content), chunk))

    counts = split(chunks, fraction, train.append, test.append)
    assert (counts.train, counts.test) == (len(train), len(test))
    return train, test


def test_split_is_deterministic_and_complete() -> None:
    content = dataset(200)
    train, test = run_split(content, 0.2)
    assert len(test) == 40
    assert sorted(line.rstrip(b"\n") for line in train + test) == sorted(content.splitlines())
    assert run_split(content, 0.2, chunk=4096) == (train, test)


def test_split_does_not_depend_on_order() -> None:
    rows = [example(i) for i in range(60)]
    _, test = run_split(jsonl(rows), 0.1)
    _, test_reversed = run_split(jsonl(rows[::-1]), 0.1)
    assert sorted(test) == sorted(test_reversed)


def test_identical_conversations_land_on_the_same_side() -> None:
    rows = [example(i) for i in range(30)]
    twins = [{**row, "prompt_id": "twin-" + row["prompt_id"]} for row in rows]
    _, test = run_split(jsonl(rows + twins), 0.3)
    test_messages = [json.loads(line)["messages"] for line in test]
    for messages in test_messages:
        assert test_messages.count(messages) == 2


def test_blank_lines_and_crlf_are_not_examples() -> None:
    content = b"\xef\xbb\xbf" + dataset(10).replace(b"\n", b"\r\n\r\n")
    train, test = run_split(content, 0.1)
    assert len(train) + len(test) == 10
    assert all(not line.endswith(b"\r\n") and line.startswith(b"{") for line in train + test)


@pytest.mark.parametrize(("n", "fraction", "k"), [(10, 0.1, 1), (10, 0.01, 1), (2, 0.9, 1), (1000, 0.1, 100)])
def test_holdout_size(n: int, fraction: float, k: int) -> None:
    assert holdout_size(n, fraction) == k
