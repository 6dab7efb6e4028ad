"""The pass over the lines: framing, JSON, then the per-example checks.

Whole-file checks (duplicates, dataset size) need every example first; the validator
runs them on the :class:`Scan` this pass returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from shared.validation.checks import ExampleChecker, describe
from shared.validation.codes import (
    ENCODING_INVALID_UTF8,
    JSON_ARRAY,
    JSON_INVALID,
    JSON_NOT_OBJECT,
    JSON_PRETTY_PRINTED,
    LINE_TOO_LONG,
)
from shared.validation.lines import UTF8_BOM, iter_lines
from shared.validation.options import ValidationOptions
from shared.validation.records import ExampleRecords
from shared.validation.report import IssueLog, Sample
from shared.validation.tokens import ContentCounter

TO_JSONL = "jq -c '.[]' in.json > out.jsonl"
COMPACT = "jq -c . in.json > out.jsonl"
_FRAGMENTS = (b"{", b"}", b"},", b"[", b"]", b"],")


@dataclass
class Scan:
    """What the pass over the lines found."""

    log: IssueLog
    records: ExampleRecords = field(default_factory=ExampleRecords)
    samples: list[Sample] = field(default_factory=list)
    blank: int = 0
    examples: int = 0  # non-blank lines, readable or not
    complete: bool = True  # False when a file-level error stopped the pass

    @property
    def lines(self) -> int:
        return self.blank + self.examples


class LineScanner:
    """Checks lines in file order into one :class:`Scan`; blocks of lines can go to several scanners.

    ``at_start``: this scanner is to see the file's first non-blank line (it stays True until
    it has), which alone decides whether the file is JSON Lines at all (a JSON array or a
    pretty-printed object stops the pass there).
    """

    def __init__(self, options: ValidationOptions, counter: ContentCounter | None, *, at_start: bool = True) -> None:
        self.result = Scan(IssueLog(options.samples_per_code))
        self.options = options
        self.at_start = at_start
        self._check = ExampleChecker(options, self.result.log, self.result.records, counter).check

    def too_long(self, number: int, size: int) -> None:
        self.result.examples += 1  # an example, if an unreadable one
        self.result.log.add(
            LINE_TOO_LONG,
            number,
            f"the line is {size:,} bytes, over the {self.options.max_line_bytes:,}-byte limit; it was skipped "
            "(is this really one example per line?)",
        )

    def feed(self, lines: Iterable[tuple[int, bytes | int]]) -> bool:
        """Check ``lines`` in order (an ``int`` is the size of a line too long to keep); False: stop the pass."""
        result, keep = self.result, self.options.keep_examples
        log, samples, check = result.log, result.samples, self._check
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        blank = examples = 0
        at_start = self.at_start
        try:
            for number, raw in lines:
                if type(raw) is int:
                    self.too_long(number, raw)
                    continue
                if not raw or raw.isspace():
                    blank += 1
                    continue
                examples += 1
                try:
                    example = loads(raw)
                except decode_error as error:
                    if _unparsable(log, number, raw, str(error), first=at_start and examples == 1):
                        result.complete = False
                        return False
                    continue
                if type(example) is not dict:
                    hint = f"; if the whole file is one JSON array, convert it with {TO_JSONL}"
                    log.add(
                        JSON_NOT_OBJECT,
                        number,
                        f"expected a JSON object, got {describe(example)}{hint if type(example) is list else ''}",
                    )
                elif check(number, example, raw) and len(samples) < keep:
                    samples.append(Sample(number, example["messages"]))
            return True
        finally:
            result.blank += blank
            result.examples += examples
            self.at_start = at_start and not examples


def scan(chunks: Iterable[bytes], options: ValidationOptions, counter: ContentCounter | None) -> Scan:
    """Check every line of ``chunks``, stopping early only when the first line shows it is not JSON Lines."""
    scanner = LineScanner(options, counter)
    scanner.feed(iter_lines(chunks, max_line_bytes=options.max_line_bytes, on_too_long=scanner.too_long))
    return scanner.result


def _unparsable(log: IssueLog, number: int, raw: bytes, error: str, *, first: bool) -> bool:
    """Report a line orjson rejected, in the uploader's terms; True when reading should stop."""
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        log.add(
            ENCODING_INVALID_UTF8,
            number,
            f"byte 0x{raw[bad.start]:02X} at column {bad.start + 1} is not valid UTF-8 "
            "(Latin-1 or Windows-1252 text? save the file as UTF-8)",
        )
        return False
    stripped = raw.strip()
    # The first line decides whether this is JSON Lines at all: if not, every line would fail.
    if first and stripped.startswith(b"["):
        log.add(JSON_ARRAY, None, f"the file is a JSON array, not JSON Lines; convert it with {TO_JSONL}")
        return True
    if first and stripped == b"{":
        log.add(
            JSON_PRETTY_PRINTED,
            None,
            f"the file is pretty-printed (each object over several lines); write one object per line: {COMPACT}",
        )
        return True
    hint = ""
    if raw.startswith(UTF8_BOM):
        hint = " (a byte-order mark in the middle of the file: were files with BOMs concatenated?)"
    elif stripped in _FRAGMENTS or (stripped.startswith(b'"') and b'":' in stripped):
        hint = f" (this looks like part of a pretty-printed object; write one object per line: {COMPACT})"
    log.add(JSON_INVALID, number, f"not valid JSON: {error}{hint}")
    return False
