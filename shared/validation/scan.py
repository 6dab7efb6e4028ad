"""The pass over the lines: framing, JSON, then the per-example checks.

Whole-file checks (duplicates, dataset size) need every example first; the validator
runs them on the :class:`Scan` this pass returns.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import orjson

from shared.validation.checks import ExampleChecker, decode_well_formed, describe
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
# The fast path is tried on every line until this many have missed it, then only while at least
# half the lines tried are well formed: a dataset with an extra key on every line would otherwise
# decode each line twice.
_MISSES_TOLERATED = 16


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
    pretty-printed object stops the pass there). ``split_keys``: see :class:`ExampleChecker`.
    """

    def __init__(
        self,
        options: ValidationOptions,
        counter: ContentCounter | None,
        *,
        at_start: bool = True,
        split_keys: array | None = None,
    ) -> None:
        self.result = Scan(IssueLog(options.samples_per_code))
        self.options = options
        self.at_start = at_start
        checker = ExampleChecker(options, self.result.log, self.result.records, counter, split_keys)
        self._check, self._check_well_formed = checker.check, checker.check_well_formed
        self._tries = self._misses = 0  # of the fast path, to stop trying where lines are seldom well formed

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
        log, samples, check, check_well_formed = result.log, result.samples, self._check, self._check_well_formed
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        blank = examples = 0
        at_start = self.at_start
        tries, misses = self._tries, self._misses
        try:
            for number, raw in lines:
                if type(raw) is int:
                    self.too_long(number, raw)
                    continue
                if not raw or raw.isspace():
                    blank += 1
                    continue
                examples += 1
                if misses < _MISSES_TOLERATED or misses * 2 < tries:
                    tries += 1
                    try:
                        well_formed = decode_well_formed(raw)
                    except msgspec.DecodeError:  # not well formed, or not JSON: orjson and check() say why
                        misses += 1
                    else:
                        if check_well_formed(number, well_formed, raw) and len(samples) < keep:
                            samples.append(Sample(number, loads(raw)["messages"]))  # dicts, in the line's key order
                        continue
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
            self._tries, self._misses = tries, misses


def scan(
    chunks: Iterable[bytes],
    options: ValidationOptions,
    counter: ContentCounter | None,
    split_keys: array | None = None,
) -> Scan:
    """Check every line of ``chunks``, stopping early only when the first line shows it is not JSON Lines."""
    scanner = LineScanner(options, counter, split_keys=split_keys)
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
