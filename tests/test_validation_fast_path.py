"""The well-formed fast path (msgspec structs) and the slow path (orjson dicts) agree on every line.

Each file is validated twice, once as shipped and once with the fast path switched off; the
reports must be identical, and the fast path must really have taken the well-formed lines (a
differential test that compared the slow path with itself would prove nothing). The lines come
from every finding's test case and from seeded mutations of valid rows, at the JSON text level
too, so escapes, duplicate keys, odd types and encodings all meet both decoders.
"""

from __future__ import annotations

import random
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared import split_key
from shared.validation import ValidationOptions, checks, scan, validate_chunks, validate_path
from tests.test_validation import POSITIVE, encode, row, write
from tests.test_validation_parallel import everything_wrong
from tests.test_validation_tokens import save_word_tokenizer

OPTIONS = ValidationOptions(max_seq_length=60, samples_per_code=1000, keep_examples=1000, min_examples_warning=0)


class CountingDecoder:
    """The fast path's decoder, counting the lines it was tried on and those it took (decoded)."""

    def __init__(self) -> None:
        self.tried = self.taken = 0

    def __call__(self, raw: bytes) -> checks.Conversation:
        self.tried += 1
        decoded = checks.decode_well_formed(raw)
        self.taken += 1
        return decoded


def both_paths(path: Path, monkeypatch: pytest.MonkeyPatch, options: ValidationOptions = OPTIONS) -> tuple[dict, int]:
    """The report with the fast path off, and how many lines the fast path took when on (same report)."""
    counting = CountingDecoder()
    with monkeypatch.context() as patch:
        patch.setattr(scan, "decode_well_formed", counting)
        patch.setattr(scan, "_MISSES_TOLERATED", 10**9)  # keep trying on every line
        fast = validate_path(path, options, workers=1).to_dict()
    with monkeypatch.context() as patch:
        patch.setattr(scan, "_MISSES_TOLERATED", 0)  # never tried
        patch.setattr(scan, "decode_well_formed", lambda raw: pytest.fail("the fast path was switched off"))
        slow = validate_path(path, options, workers=1).to_dict()
    assert fast == slow
    return slow, counting.taken


def mutations(rng: random.Random, i: int) -> bytes:
    """One line: a valid row, maybe changed in its structure, maybe then in its JSON text."""
    example: dict[str, Any] = row(i, messages=[dict(m) for m in _turns(rng, i)])
    change = rng.randrange(16)
    messages = example["messages"]
    index = rng.randrange(len(messages))
    if change == 0:
        del example["prompt_id"]
    elif change == 1:
        example["prompt_id"] = rng.choice(["", None, 7, ["x"], f"id-{i % 5}"])  # f"id-{i % 5}": duplicates
    elif change == 2:
        example[rng.choice(["id", "source", "prompt"])] = rng.choice([None, 1, "x", {"a": 1}, [1, 2]])
    elif change == 3:
        messages[index]["role"] = rng.choice(["bot", "User", "", None, 3, "system", "assistant", "user"])
    elif change == 4:
        messages[index]["content"] = rng.choice(["", "  \n\t", "\u3000", None, 5, ["x"], {"t": "x"}])
    elif change == 5:
        messages[index][rng.choice(["name", "weight", "tool_calls"])] = "x"
    elif change == 6:
        del messages[index][rng.choice(["role", "content"])]
    elif change == 7:
        messages[index] = rng.choice([None, "text", ["user", "hi"], {}])
    elif change == 8:
        example["messages"] = rng.choice([[], {}, "hi", None])
    elif change == 9:
        messages[index]["content"] += rng.choice(["<|user|>", "a | b", "<|end|>", "|<", "<\\|"])
    elif change == 10:
        messages[index] = {"content": messages[index]["content"], "role": messages[index]["role"]}  # key order
    elif change == 11:
        example = {"messages": messages}  # the OpenAI shape: no prompt, no prompt_id
    line = orjson.dumps(example)
    return _text_mutation(rng, line) if rng.random() < 0.3 else line


def _turns(rng: random.Random, i: int) -> list[dict[str, str]]:
    texts = ["How do tides work?", "Привет, как дела?", "潮汐はどう動く?", "emoji 🌊 waves", "tab\tand\nnewline"]
    turns = []
    if rng.random() < 0.2:
        turns.append({"role": "system", "content": "Be brief."})
    for turn in range(rng.randrange(1, 4)):
        text = f"{rng.choice(texts)} {i % 40} {turn}" * rng.choice([1, 1, 30, 300])
        turns += [{"role": "user", "content": text}, {"role": "assistant", "content": text[::-1]}]
    return turns


def _text_mutation(rng: random.Random, line: bytes) -> bytes:
    """A change only the JSON text shows: escapes, duplicate keys, spacing, broken or foreign bytes."""
    change = rng.randrange(9)
    if change == 0:
        return line.replace(b'"user"', b'"\\u0075ser"', 1)  # an escaped role
    if change == 1:
        return line.replace(b"How", b"\\u0048ow").replace(b"/", b"\\/")  # escapes of plain characters
    if change == 2:
        return line.replace(b'"role":"user"', b'"role":"user","role":"bot"', 1)  # duplicate key: last wins
    if change == 3:
        return line.replace(b'"role":"assistant"', b'"role":"bot","role":"assistant"', 1)
    if change == 4:
        return line.replace(b",", b" , ").replace(b":", b" :\t")
    if change == 5:
        return line[: rng.randrange(1, len(line))]  # cut short
    if change == 6:
        at = rng.randrange(len(line))
        return line[:at] + rng.choice([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\\ud800", b"\x01"]) + line[at:]
    if change == 7:
        return line.replace(b'"prompt_id"', b'"prompt_id":"dup","prompt_id"', 1)
    return line.replace(b'"prompt":', b'"prompt":1e400,"prompt":', 1)


def test_every_finding_is_the_same_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [encode(row(i)) for i in range(1, 21)] + [encode(line) for _, line in POSITIVE] + everything_wrong()
    report, taken = both_paths(write(tmp_path, lines), monkeypatch)
    assert taken >= 20  # the valid rows at least went the fast way
    assert len(report["counts"]) >= 20


@pytest.mark.parametrize("seed", range(6))
def test_seeded_mutations_are_checked_the_same_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    lines = [mutations(rng, i) for i in range(400)]
    report, taken = both_paths(write(tmp_path, lines), monkeypatch)
    assert 100 < taken < 400  # both paths ran, on many lines each
    assert report["counts"].get("example.duplicate", 0) + report["counts"].get("prompt_id.duplicate", 0) > 0
    assert len(report["samples"]) > 50  # kept samples are the line's own dicts on both paths


def test_exact_token_counts_are_the_same_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(99)
    path = write(tmp_path, [mutations(rng, i) for i in range(150)])
    tokenizer = save_word_tokenizer(tmp_path / "tokenizer")
    options = ValidationOptions(tokenizer=str(tokenizer), max_seq_length=40, samples_per_code=1000)
    report, taken = both_paths(path, monkeypatch, options)
    assert taken > 50
    assert report["stats"]["tokens"]["exact"] is True


def test_a_dataset_that_is_never_well_formed_stops_trying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every line has an extra key: after the misses tolerated, lines are decoded once, by orjson only."""
    counting = CountingDecoder()
    monkeypatch.setattr(scan, "decode_well_formed", counting)
    path = write(tmp_path, [row(i, id=i) for i in range(1000)])
    report = validate_path(path, OPTIONS, workers=1)
    assert report.counts["schema.unknown_key"] == 1000
    assert counting.tried == scan._MISSES_TOLERATED


def _recorded(line: bytes) -> bool:
    """Whether validation keeps a record of the line: a JSON object with a non-empty list of messages."""
    try:
        example = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return type(example) is dict and type(example.get("messages")) is list and bool(example["messages"])


@pytest.mark.parametrize("seed", range(3))
def test_split_keys_are_the_split_s_own_on_both_paths(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Intake's split keys, collected while validating, are what the split would compute from each line."""
    rng = random.Random(100 + seed)
    lines = [mutations(rng, i) for i in range(400)]
    expected = [split_key.of_line(line) for line in lines if _recorded(line)]
    counting = CountingDecoder()
    for tolerated in (10**9, 0):  # the fast path on every line it takes, then never
        keys = array("Q")
        with monkeypatch.context() as patch:
            patch.setattr(scan, "decode_well_formed", counting)
            patch.setattr(scan, "_MISSES_TOLERATED", tolerated)
            validate_chunks([b"\n".join(lines)], OPTIONS, source="mutations.jsonl", split_keys=keys)
        assert list(keys) == expected
    assert 100 < counting.taken < 400  # both paths ran, on many lines each
    assert len(expected) > 200
