"""The deterministic split, on plain bytes."""

from __future__ import annotations

import json
from array import array

import pytest

from shared import split_key
from shared.split import SplitKeysMismatchError, holdout_size, split
from shared.validation import ValidationOptions, validate_chunks
from tests.data import dataset, example, jsonl


def run_split(
    content: bytes, fraction: float, chunk: int = 7, keys: array | None = None
) -> tuple[list[bytes], list[bytes]]:
    train: list[bytes] = []
    test: list[bytes] = []

    def chunks():
        return (content[i : i + chunk] for i in range(0, len(content), chunk))

    counts = split(chunks, fraction, train.append, test.append, keys=keys)
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


def validated_keys(content: bytes) -> array:
    keys = array("Q")
    report = validate_chunks([content], ValidationOptions(), source="chat.jsonl", split_keys=keys)
    assert report.valid
    return keys


def test_keys_from_validation_split_the_same_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Intake's way (keys collected while validating) gives the split's own result, and parses no line again."""
    content = b"\xef\xbb\xbf" + dataset(120).replace(b"\n", b"\r\n\n")  # BOM, CRLF, blank lines: same framing
    expected = run_split(content, 0.1)
    keys = validated_keys(content)
    monkeypatch.setattr(split_key, "of_line", lambda line: pytest.fail("a line was parsed again"))
    assert run_split(content, 0.1, keys=keys) == expected
    assert len(expected[1]) == 12


@pytest.mark.parametrize("change", ["fewer", "more"])
def test_keys_for_other_bytes_are_refused(change: str) -> None:
    content = dataset(20)
    keys = validated_keys(content)
    if change == "fewer":
        keys.pop()
    else:
        keys.append(0)
    with pytest.raises(SplitKeysMismatchError):
        run_split(content, 0.1, keys=keys)


def test_the_split_key_of_a_line_does_not_change() -> None:
    """Pinned: a new key would put the examples of every dataset uploaded again on other sides."""
    line = (
        b'{"prompt":"Hi","messages":[{"role":"user","content":"Hi"},'
        b'{"content":"Hello! \\u00e9","role":"assistant"}],"prompt_id":"p1"}'
    )
    assert split_key.of_line(line) == 4037463066076039467  # blake2b-64 of the sorted-key JSON of the messages


def test_an_ignored_message_key_nested_deeper_than_orjson_writes_still_splits() -> None:
    """orjson reads 1,024 levels but writes 254: a valid example can hold what its encoder refuses."""
    deep = json.loads("[" * 600 + "]" * 600)
    rows = [example(i) for i in range(20)]
    rows[3]["messages"][0]["tool_calls"] = deep  # a warning (ignored by the chat template), not an error
    content = jsonl(rows)
    keys = validated_keys(content)
    assert len(keys) == 20
    assert run_split(content, 0.1, keys=keys) == run_split(content, 0.1)
