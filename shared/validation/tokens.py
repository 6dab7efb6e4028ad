"""Token counts per example: a cheap estimate by default, exact with a local tokenizer.

The estimate exists because validation runs inside a Function on every upload and must not
download or load a model's tokenizer; it only has to be good enough to flag examples that
will be truncated and to size the bill. The rule, per message content:

    tokens ~= chars / 4 + (utf8_bytes - chars) / 2

ASCII text costs 4 characters per token (OpenAI's rule of thumb for English). Each extra
UTF-8 byte of a non-ASCII character adds half a token, so a Cyrillic, Greek or Arabic
letter (2 bytes) counts 0.75 token and a CJK character (3 bytes) 1.25 tokens, in line with
what the SentencePiece tokenizers of Llama-family models such as Phi-3 produce. A
non-ASCII content longer than ``SAMPLE_CHARS`` is measured on its first and last halves of
that and extrapolated: encoding whole long texts to UTF-8 just to count bytes would cost a
tenth of the validation time, for an estimate that is an estimate anyway. Each
message then adds ``MESSAGE_OVERHEAD`` tokens for the chat template's role and end markers
(Phi-3: ``<|user|>``, newline, ``<|end|>``, newline) and each example ``EXAMPLE_OVERHEAD``
(BOS and the final end-of-text). Exact mode counts content tokens with the tokenizer and
adds the same template overheads, since the template itself is model configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

MESSAGE_OVERHEAD = 4
EXAMPLE_OVERHEAD = 2
SAMPLE_CHARS = 1024

ContentCounter = Callable[[list[str]], int]


def estimate(text: str, utf8: bytes | None = None) -> int:
    """Estimated tokens of one message content (see the module docstring for the rule).

    ``utf8``: the content already encoded, if the caller has it, so a short one is not encoded twice.
    """
    chars = len(text)
    if text.isascii():  # O(1) in CPython: the common case costs no scan at all
        return (chars + 3) // 4
    if chars <= SAMPLE_CHARS:
        extra = len(text.encode() if utf8 is None else utf8) - chars  # the bytes beyond one per character
    else:
        half = SAMPLE_CHARS // 2
        extra = (len((text[:half] + text[-half:]).encode()) - SAMPLE_CHARS) * chars // SAMPLE_CHARS
    return (chars + 2 * extra + 3) // 4


def load_counter(tokenizer: str | None) -> ContentCounter | None:
    """An exact content-token counter from a tokenizer.json (or a folder holding one), or None.

    The ``tokenizers`` import is deferred: it is only needed when exact counts are asked for.
    """
    if tokenizer is None:
        return None
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer not found: {path} (give a tokenizer.json or a folder that holds one)")
    from tokenizers import Tokenizer

    try:
        loaded = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for unreadable files
        raise ValueError(f"cannot load tokenizer {path}: {error}") from error

    def count(contents: list[str]) -> int:
        return sum(len(encoding.ids) for encoding in loaded.encode_batch(contents, add_special_tokens=False))

    return count
