"""Exact token counts with a real tokenizer, trained here with `tokenizers` (offline, in milliseconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from shared.validation import ValidationOptions, validate_path
from shared.validation.tokens import EXAMPLE_OVERHEAD, MESSAGE_OVERHEAD
from tests.test_validation import row, write

WORDS = "alpha beta gamma delta epsilon zeta eta theta"


def save_word_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer in ``folder``: one token per whitespace-separated word, so counts are known."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    return save_word_tokenizer(tmp_path / "tokenizer")


def example(i: int, answer_words: int) -> dict:
    question = f"alpha beta question{i}"  # 3 tokens: an unknown word is one [UNK]
    answer = " ".join(WORDS.split()[j % 8] for j in range(answer_words))
    return row(i, messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def expected_tokens(answer_words: int) -> int:
    return EXAMPLE_OVERHEAD + 2 * MESSAGE_OVERHEAD + 3 + answer_words


@pytest.mark.parametrize("form", ["file", "folder"])
def test_exact_counts_with_a_tokenizer(tmp_path: Path, tokenizer_dir: Path, form: str) -> None:
    sizes = [5, 10, 20, 40] * 3
    path = write(tmp_path, [example(i, words) for i, words in enumerate(sizes)])
    tokenizer = tokenizer_dir / "tokenizer.json" if form == "file" else tokenizer_dir
    report = validate_path(path, ValidationOptions(tokenizer=str(tokenizer), max_seq_length=30))
    tokens = report.stats["tokens"]
    assert tokens["exact"] is True
    assert tokens["total"] == sum(expected_tokens(words) for words in sizes)
    assert (tokens["min"], tokens["max"]) == (expected_tokens(5), expected_tokens(40))
    # 20- and 40-word answers exceed 30 tokens: 6 examples, reported without "(estimated)".
    assert report.counts["tokens.too_long"] == 6
    too_long = [issue.message for issue in report.warnings if issue.code == "tokens.too_long"]
    assert too_long and not any("(estimated)" in message for message in too_long)


def test_estimates_say_so(tmp_path: Path) -> None:
    report = validate_path(write(tmp_path, [example(i, 40) for i in range(12)]), ValidationOptions(max_seq_length=10))
    assert report.stats["tokens"]["exact"] is False
    too_long = [issue.message for issue in report.warnings if issue.code == "tokens.too_long"]
    assert too_long and all("(estimated)" in message for message in too_long)


def test_a_missing_tokenizer_is_an_options_error(tmp_path: Path) -> None:
    path = write(tmp_path, [example(i, 5) for i in range(12)])
    with pytest.raises(ValueError, match="tokenizer not found"):
        validate_path(path, ValidationOptions(tokenizer=str(tmp_path / "nowhere")))


def test_an_unreadable_tokenizer_is_an_options_error(tmp_path: Path) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not a tokenizer")
    path = write(tmp_path, [example(i, 5) for i in range(12)])
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        validate_path(path, ValidationOptions(tokenizer=str(broken)))
