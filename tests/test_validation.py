"""Per-example checks, whole-file checks, statistics and the report, on real files in tmp_path.

Each check code has a case that must raise it (on the right line) and a near miss that
must not. The other tests_validation_* modules cover the file level, tokens and the CLI;
they build their data with the helpers here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.config import Settings
from shared.validation import CHECKS, Report, Severity, ValidationOptions, validate_chunks, validate_path
from shared.validation.tokens import EXAMPLE_OVERHEAD, MESSAGE_OVERHEAD, estimate
from tests.paths import REPO

BASE = 60  # examples in a valid file: above the default min_examples_warning (50)


def conversation(i: int, turns: int = 2) -> list[dict[str, str]]:
    """A valid user/assistant conversation, unique per ``i``."""
    messages = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn} of conversation {i}: how do tides work?"})
        messages.append({"role": "assistant", "content": f"Answer {turn} of conversation {i}: the moon pulls."})
    return messages


def row(i: int, messages: Any = None, **extra: Any) -> dict[str, Any]:
    messages = conversation(i) if messages is None else messages
    return {"prompt": f"prompt {i}", "messages": messages, "prompt_id": f"id-{i:06d}", **extra}


def encode(line: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(line, bytes):
        return line
    if isinstance(line, str):
        return line.encode()
    return orjson.dumps(line)


def write(tmp_path: Path, lines: list[Any], name: str = "data.jsonl", newline: bytes = b"\n") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(encode(line) + newline for line in lines))
    return path


def rows_with(replacements: dict[int, Any], count: int = BASE) -> list[Any]:
    """``count`` valid rows, with the given 1-based lines replaced."""
    return [replacements.get(number, row(number)) for number in range(1, count + 1)]


def check(tmp_path: Path, lines: list[Any], **options: Any) -> Report:
    return validate_path(write(tmp_path, lines), ValidationOptions(**options))


def lines_of(report: Report, code: str) -> list[int | None]:
    return [
        issue["line"]
        for kind in ("errors", "warnings", "notes")
        for issue in report.to_dict()[kind]
        if issue["code"] == code
    ]


def test_a_valid_file_has_no_findings(tmp_path: Path) -> None:
    report = check(tmp_path, rows_with({}))
    assert report.valid
    assert report.counts == {}
    assert report.examples == BASE


# Each case: a line that must raise the code, put on line 3 of an otherwise valid file.
POSITIVE: list[tuple[str, Any]] = [
    ("json.invalid", b'{"messages": [{"role": "user"'),
    ("json.invalid", b"{'messages': []}"),
    ("json.not_object", b"[1, 2]"),
    ("json.not_object", b'"just a string"'),
    ("schema.messages_missing", {"prompt": "hi", "prompt_id": "x"}),
    ("schema.messages_invalid", row(3, messages=[])),
    ("schema.messages_invalid", row(3, messages="hello")),
    ("schema.message_not_object", row(3, messages=["hello", {"role": "assistant", "content": "hi"}])),
    ("schema.role_invalid", row(3, messages=[{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}])),
    ("schema.role_invalid", row(3, messages=[{"content": "a"}, {"role": "assistant", "content": "b"}])),
    (
        "schema.role_invalid",
        row(3, messages=[{"role": ["user"], "content": "a"}, {"role": "assistant", "content": "b"}]),
    ),
    (
        "schema.content_invalid",
        row(3, messages=[{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]),
    ),
    (
        "schema.content_invalid",
        row(
            3,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": "b"},
            ],
        ),
    ),
    ("schema.content_invalid", row(3, messages=[{"role": "user"}, {"role": "assistant", "content": "b"}])),
    ("schema.content_empty", row(3, messages=[{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}])),
    (
        "schema.content_empty",
        row(3, messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": " \n\t"}]),
    ),
    ("schema.unknown_key", row(3, source="web")),
    (
        "schema.message_unknown_key",
        row(3, messages=[{"role": "user", "content": "a", "name": "bob"}, {"role": "assistant", "content": "b"}]),
    ),
    ("conversation.no_assistant", row(3, messages=[{"role": "user", "content": "a"}])),
    (
        "conversation.no_assistant",
        row(3, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]),
    ),
    (
        "conversation.system_not_first",
        row(
            3,
            messages=[
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "b"},
            ],
        ),
    ),
    (
        "conversation.not_alternating",
        row(
            3,
            messages=[
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
        ),
    ),
    (
        "conversation.not_alternating",
        row(
            3,
            messages=[
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
        ),
    ),
    (
        "conversation.last_not_assistant",
        row(
            3,
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
        ),
    ),
    (
        "content.reserved_token",
        row(3, messages=[{"role": "user", "content": "a <|end|> b"}, {"role": "assistant", "content": "c"}]),
    ),
    (
        "content.reserved_token",
        row(3, messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "c<|endoftext|>"}]),
    ),
    # The same token with "<" and ">" escaped, as .NET's System.Text.Json writes them.
    (
        "content.reserved_token",
        b'{"messages": [{"role": "user", "content": "a \\u003c|user|\\u003e b"},'
        b' {"role": "assistant", "content": "c"}], "prompt_id": "x3"}',
    ),
    ("prompt_id.missing", {"prompt": "p", "messages": conversation(3)}),
    ("prompt_id.invalid", row(3, prompt_id=17)),
    ("prompt_id.invalid", row(3, prompt_id="")),
]


@pytest.mark.parametrize(("code", "line"), POSITIVE, ids=[f"{code}-{i}" for i, (code, _) in enumerate(POSITIVE)])
def test_check_raises_its_code_on_the_right_line(tmp_path: Path, code: str, line: Any) -> None:
    report = check(tmp_path, rows_with({3: line}))
    assert lines_of(report, code) == [3], report.to_dict()
    assert report.counts[code] == 1
    assert report.valid is (CHECKS[code].severity is not Severity.ERROR)


# Near misses: lines that look suspicious but are fine for the given code.
NEGATIVE: list[tuple[str, Any]] = [
    ("conversation.system_not_first", row(3, messages=[{"role": "system", "content": "s"}, *conversation(3)])),
    ("conversation.not_alternating", row(3, messages=[{"role": "system", "content": "s"}, *conversation(3)])),
    ("conversation.not_alternating", row(3, messages=conversation(3, turns=4))),
    (
        "content.reserved_token",
        row(3, messages=[{"role": "user", "content": "| a | b |\n|---|---|"}, *conversation(3)[1:]]),
    ),
    ("content.reserved_token", row(3, messages=[{"role": "user", "content": "x <|b and <|end"}, *conversation(3)[1:]])),
    ("content.reserved_token", row(3, prompt="<|endoftext|> in the prompt field is not trained on")),
    ("schema.content_empty", row(3, messages=[{"role": "user", "content": " a "}, *conversation(3)[1:]])),
    ("schema.unknown_key", row(3, prompt="ultrachat's own keys are known")),
    ("schema.message_unknown_key", row(3, messages=[{"content": "a", "role": "user"}, *conversation(3)[1:]])),
    ("json.invalid", b'  {"messages": ' + orjson.dumps(conversation(3)) + b', "prompt_id": "ws"}  '),
]


@pytest.mark.parametrize(("code", "line"), NEGATIVE, ids=[f"{code}-{i}" for i, (code, _) in enumerate(NEGATIVE)])
def test_near_miss_does_not_raise(tmp_path: Path, code: str, line: Any) -> None:
    report = check(tmp_path, rows_with({3: line}))
    assert code not in report.counts, report.to_dict()
    assert report.valid


def test_examples_over_max_seq_length_are_warned(tmp_path: Path) -> None:
    long = row(4, messages=[{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}])
    report = check(tmp_path, rows_with({4: long}), max_seq_length=200)
    assert lines_of(report, "tokens.too_long") == [4]
    assert report.valid
    assert report.stats["tokens"]["over_max_seq_length"] == 1
    assert "tokens.too_long" not in check(tmp_path, rows_with({4: long}), max_seq_length=4096).counts


def test_duplicate_conversations_point_at_the_first(tmp_path: Path) -> None:
    # Same messages, different prompt_id and key order: still the same conversation.
    twin = {"prompt_id": "other", "messages": conversation(2), "prompt": "different"}
    report = check(tmp_path, rows_with({7: twin, 9: twin}))
    duplicates = [issue for issue in report.warnings if issue.code == "example.duplicate"]
    assert [(issue.line, issue.message) for issue in duplicates] == [
        (7, "same conversation as line 2"),
        (9, "same conversation as line 2"),
    ]
    assert report.valid


def test_different_roles_are_not_duplicates(tmp_path: Path) -> None:
    swapped = [{"role": m["role"], "content": m["content"]} for m in conversation(2)]
    swapped[0]["role"] = "system"  # same texts, another role: a different conversation
    report = check(tmp_path, rows_with({5: row(5, messages=swapped)}))
    assert "example.duplicate" not in report.counts


def test_duplicates_are_found_by_content_whatever_its_script_or_escaping(tmp_path: Path) -> None:
    # ASCII contents are digested by XXH3 of their bytes, the others by hash() of the str: both must agree
    # on equal texts however they were written, and tell apart texts one accent apart.
    plain = [{"role": "user", "content": "tab\there"}, {"role": "assistant", "content": "plain"}]
    accented = [{"role": "user", "content": "café"}, {"role": "assistant", "content": "日本語"}]
    near = [{"role": "user", "content": "cafe"}, {"role": "assistant", "content": "日本語"}]
    escaped = {16: json.dumps(row(16, messages=plain)), 17: json.dumps(row(17, messages=accented))}  # \u escapes
    report = check(tmp_path, rows_with({13: row(13, messages=plain), 14: row(14, messages=accented)} | escaped))
    assert [(i.line, i.message) for i in report.warnings if i.code == "example.duplicate"] == [
        (16, "same conversation as line 13"),
        (17, "same conversation as line 14"),
    ]
    report = check(tmp_path, rows_with({14: row(14, messages=accented), 15: row(15, messages=near)}))
    assert "example.duplicate" not in report.counts


def test_duplicate_prompt_ids(tmp_path: Path) -> None:
    report = check(tmp_path, rows_with({8: row(8, prompt_id="id-000003")}))
    assert lines_of(report, "prompt_id.duplicate") == [8]
    assert report.warnings[0].message == "prompt_id already used on line 3"
    assert "example.duplicate" not in report.counts  # different conversations


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "dataset.too_few_examples"),
        (9, "dataset.too_few_examples"),
        (10, "dataset.few_examples"),
        (49, "dataset.few_examples"),
        (50, None),
    ],
)
def test_dataset_size(tmp_path: Path, count: int, expected: str | None) -> None:
    report = check(tmp_path, rows_with({}, count=count))
    found = {code for code in report.counts if code.startswith("dataset.")}
    assert found == ({expected} if expected else set())
    assert report.valid is (expected != "dataset.too_few_examples")


def test_min_examples_warning_follows_the_option(tmp_path: Path) -> None:
    assert "dataset.few_examples" not in check(tmp_path, rows_with({}, count=12), min_examples_warning=10).counts


def test_line_numbers_count_blank_lines_and_crlf(tmp_path: Path) -> None:
    lines = [row(1), b"", row(2), b"   ", row(3, messages=[{"role": "user", "content": "a"}]), *rows_with({})[3:]]
    path = write(tmp_path, lines, newline=b"\r\n")
    report = validate_path(path, ValidationOptions())
    assert lines_of(report, "conversation.no_assistant") == [5]
    assert report.stats["blank_lines"] == 2
    assert report.lines == len(lines)
    assert report.examples == len(lines) - 2


def test_findings_are_capped_per_code_with_totals(tmp_path: Path) -> None:
    no_answer = {n: row(n, messages=[{"role": "user", "content": f"question {n}"}]) for n in range(2, 14)}
    report = check(tmp_path, rows_with(no_answer), samples_per_code=5)
    document = report.to_dict()
    assert [e["line"] for e in document["errors"] if e["code"] == "conversation.no_assistant"] == [2, 3, 4, 5, 6]
    assert document["counts"]["conversation.no_assistant"] == 12
    assert "… and 7 more `conversation.no_assistant`" in report.to_markdown()


def test_report_document_shape(tmp_path: Path) -> None:
    path = write(tmp_path, rows_with({2: b"not json", 4: row(4, extra="x")}))
    document = validate_path(path, ValidationOptions()).to_dict()
    assert orjson.loads(orjson.dumps(document)) == document  # JSON-able as is
    assert document["valid"] is False
    assert document["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert document["bytes"] == path.stat().st_size
    assert document["lines"] == BASE
    assert document["source"] == str(path)
    assert document["errors"] == [
        {"line": 2, "code": "json.invalid", "message": document["errors"][0]["message"]},
    ]
    assert document["errors"][0]["message"].startswith("not valid JSON: ")
    assert document["notes"] == [
        {"line": 4, "code": "schema.unknown_key", "message": "top-level key 'extra' is not used for fine-tuning"}
    ]
    assert document["warnings"] == []
    assert document["counts"] == {"json.invalid": 1, "schema.unknown_key": 1}
    assert set(document["stats"]) >= {"examples", "blank_lines", "messages_per_example", "tokens", "billed_tokens"}


def test_token_statistics_are_true_percentiles(tmp_path: Path) -> None:
    # Example k has a 4-character user turn (1 token) and a 4k-character answer (k tokens):
    # 11 + k tokens, so the file holds exactly the token counts 12..111.
    fixed = EXAMPLE_OVERHEAD + 2 * MESSAGE_OVERHEAD + 1
    lines = [
        row(k, messages=[{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "x" * (4 * k)}])
        for k in range(1, 101)
    ]
    report = check(tmp_path, lines, max_seq_length=50, epochs=3)
    tokens = report.stats["tokens"]
    assert fixed == 11
    assert (tokens["min"], tokens["max"], tokens["total"]) == (12, 111, sum(range(12, 112)))
    assert tokens["mean"] == pytest.approx(61.5)
    assert tokens["p50"] == pytest.approx(61.5)  # between the 50th and 51st value
    assert tokens["p5"] == pytest.approx(16.95)  # 12 + 4.95
    assert tokens["p95"] == pytest.approx(106.05)  # 12 + 94.05
    assert tokens["over_max_seq_length"] == 61  # 51..111
    assert tokens["exact"] is False
    billed_per_epoch = sum(range(12, 51)) + 61 * 50  # each example billed up to max_seq_length
    assert report.stats["billed_tokens"] == 3 * billed_per_epoch


def test_message_and_turn_statistics(tmp_path: Path) -> None:
    sizes = [1, 2, 2, 3] * 3  # turns per example: 2, 4, 4 and 6 messages
    report = check(tmp_path, [row(i, messages=conversation(i, turns)) for i, turns in enumerate(sizes)])
    messages, turns = report.stats["messages_per_example"], report.stats["assistant_turns_per_example"]
    assert (messages["min"], messages["mean"], messages["p50"], messages["max"]) == (2, 4.0, 4.0, 6)
    assert (turns["min"], turns["mean"], turns["p50"], turns["max"]) == (1, 2.0, 2.0, 3)


def test_median_of_an_even_count_interpolates(tmp_path: Path) -> None:
    report = check(tmp_path, [row(i, messages=conversation(i, 1 + i % 2)) for i in range(10)])
    assert report.stats["messages_per_example"]["p50"] == 3.0  # five 2s and five 4s


def test_token_estimate_rule() -> None:
    assert estimate("abcd" * 10) == 10  # ASCII: 4 characters a token
    assert estimate("abc") == 1  # rounded up
    assert estimate("ж" * 4) == 3  # 2-byte characters: 0.75 token each
    assert estimate("中" * 4) == 5  # 3-byte characters: 1.25 tokens each
    # Long non-ASCII texts are measured on their two ends: exact when the ends are typical.
    mixed = "a" * 600 + "中" * 600
    assert estimate(mixed) == (2 * len(mixed.encode()) - len(mixed) + 3) // 4 == 900


def test_keep_examples_keeps_the_first_error_free_ones(tmp_path: Path) -> None:
    bad = row(1, messages=[{"role": "user", "content": "a"}])
    report = check(tmp_path, rows_with({1: bad}), keep_examples=2)
    assert [sample.line for sample in report.samples] == [2, 3]
    assert report.samples[0].messages == conversation(2)
    assert report.to_dict()["samples"][0]["line"] == 2


def test_chunking_does_not_change_the_report(tmp_path: Path) -> None:
    lines = rows_with({3: b"oops", 5: row(5, messages=[{"role": "user", "content": "a"}])})
    data = b"\xef\xbb\xbf" + b"\r\n".join(encode(line) for line in lines)
    whole = validate_chunks([data], ValidationOptions(), source="x").to_dict()
    for size in (1, 2, 3, 64, 1000):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert validate_chunks(pieces, ValidationOptions(), source="x").to_dict() == whole


def test_progress_reports_bytes_consumed(tmp_path: Path) -> None:
    data = b"".join(encode(line) + b"\n" for line in rows_with({}))
    seen: list[int] = []
    validate_chunks([data[:1000], data[1000:5000], data[5000:]], ValidationOptions(), source="x", progress=seen.append)
    assert seen == [1000, 5000, len(data)]


def test_errors_from_the_source_reach_the_caller() -> None:
    def chunks():
        yield b'{"messages": []}\n'
        raise ConnectionError("download interrupted")

    with pytest.raises(ConnectionError, match="download interrupted"):
        validate_chunks(chunks(), ValidationOptions(), source="x")


def test_options_from_settings() -> None:
    settings = Settings(max_seq_length=2048, min_examples_warning=20, finetune_parameters={"num_train_epochs": 2})
    options = ValidationOptions.from_settings(settings, keep_examples=3)
    assert (options.max_seq_length, options.min_examples_warning, options.epochs, options.keep_examples) == (
        2048,
        20,
        2,
        3,
    )
    assert options.tokenizer is None


def test_options_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_seq_length"):
        ValidationOptions(max_seq_length=0)
    with pytest.raises(ValueError, match="reserved tokens"):
        ValidationOptions(reserved_tokens=("[INST]",))


@pytest.mark.parametrize("document", ["docs/validation.md", "README.md"])
def test_every_code_is_documented_with_its_severity(document: str) -> None:
    """The tables users read (the README's and docs/validation.md's) must match the code."""
    table = (REPO / document).read_text(encoding="utf-8")
    documented = dict(re.findall(r"^\| `([a-z_0-9.]+)` \| (error|warning|note) \|", table, flags=re.MULTILINE))
    assert documented == {code: str(check.severity) for code, check in CHECKS.items()}
