"""The outcome of a validation run: its findings, statistics, and JSON and Markdown renderings.

A dataset with a systematic problem repeats it on every line, so only the first
``samples_per_code`` findings of each code are kept (enough to see and fix the pattern)
while ``counts`` has the totals; the report stays small whatever the file size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.validation.codes import CHECKS, Severity
from shared.validation.options import ValidationOptions

_HEADINGS = {Severity.ERROR: "Errors", Severity.WARNING: "Warnings", Severity.NOTE: "Notes"}


@dataclass(frozen=True)
class Issue:
    """One finding; ``line`` is 1-based, or None for the file as a whole."""

    line: int | None
    code: str
    message: str

    @property
    def severity(self) -> Severity:
        return CHECKS[self.code].severity

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}


class IssueLog:
    """Counts every finding, keeps the first ``cap`` of each code."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}
        self.kept: list[Issue] = []
        self.errors = 0  # callers compare it before and after a check to see if it failed

    def add(self, code: str, line: int | None, message: str) -> None:
        seen = self.counts.get(code, 0) + 1
        self.counts[code] = seen
        if CHECKS[code].severity is Severity.ERROR:
            self.errors += 1
        if seen <= self.cap:
            self.kept.append(Issue(line, code, message))


@dataclass(frozen=True)
class Sample:
    """An error-free conversation kept for display (``ValidationOptions.keep_examples``)."""

    line: int
    messages: list[dict[str, Any]]


@dataclass(frozen=True)
class Report:
    """Everything one validation run found out about one file."""

    source: str
    sha256: str  # of exactly the bytes read; the run identity of a dataset
    bytes_read: int
    lines: int
    examples: int
    complete: bool  # False when a file-level error stopped reading early
    issues: tuple[Issue, ...]
    counts: dict[str, int]
    stats: dict[str, Any]
    options: ValidationOptions
    samples: tuple[Sample, ...] = field(default=())

    @property
    def valid(self) -> bool:
        return not any(CHECKS[code].severity is Severity.ERROR for code in self.counts)

    def by_severity(self, severity: Severity) -> list[Issue]:
        """Kept findings of one severity, file-level first, then in line order."""
        chosen = [issue for issue in self.issues if issue.severity is severity]
        return sorted(chosen, key=lambda issue: (issue.line is not None, issue.line or 0, issue.code))

    @property
    def errors(self) -> list[Issue]:
        return self.by_severity(Severity.ERROR)

    @property
    def warnings(self) -> list[Issue]:
        return self.by_severity(Severity.WARNING)

    @property
    def notes(self) -> list[Issue]:
        return self.by_severity(Severity.NOTE)

    def total(self, severity: Severity) -> int:
        """How many findings of a severity there were, kept or not."""
        return sum(count for code, count in self.counts.items() if CHECKS[code].severity is severity)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able document: the stored report and the CLI's ``--json`` output."""
        options = asdict(self.options)
        options["reserved_tokens"] = list(self.options.reserved_tokens)
        return {
            "valid": self.valid,
            "source": self.source,
            "sha256": self.sha256,
            "bytes": self.bytes_read,
            "lines": self.lines,
            "examples": self.examples,
            "complete": self.complete,
            "errors": [issue.to_dict() for issue in self.errors],
            "warnings": [issue.to_dict() for issue in self.warnings],
            "notes": [issue.to_dict() for issue in self.notes],
            "counts": dict(sorted(self.counts.items())),
            "stats": self.stats,
            "options": options,
            "samples": [{"line": sample.line, "messages": sample.messages} for sample in self.samples],
        }

    def to_markdown(self) -> str:
        """A short human summary: verdict, size, statistics, then findings grouped by code."""
        verdict = "valid" if self.valid else "**INVALID**"
        facts = [
            f"{_count(self.examples, 'example')} in {_size(self.bytes_read)} ({_count(self.lines, 'line')})",
            f"sha256 `{self.sha256[:16]}…`",
            *(_count(self.total(severity), str(severity)) for severity in Severity if self.total(severity)),
        ]
        out = [f"## `{self.source}`: {verdict}", "", " · ".join(facts)]
        if not self.complete:
            out += ["", "Validation stopped at the first file-level error; fix it and upload again."]
        out += _stats_markdown(self.stats)
        for severity in Severity:
            out += _findings_markdown(self, severity)
        return "\n".join(out) + "\n"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _size(size: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:,.1f} {unit}"
    return _count(size, "byte")


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.1f}"


def _stats_markdown(stats: dict[str, Any]) -> list[str]:
    tokens = stats.get("tokens") or {}
    if not tokens.get("counted"):
        return []
    kind = "exact" if tokens["exact"] else "estimated"
    rows = [
        ("messages", stats["messages_per_example"]),
        ("assistant turns", stats["assistant_turns_per_example"]),
        (f"tokens ({kind})", tokens),
    ]
    out = ["", "| per example | min | mean | p50 | max |", "|---|--:|--:|--:|--:|"]
    out += [
        f"| {name} | {_number(row['min'])} | {_number(row['mean'])} | {_number(row['p50'])} | {_number(row['max'])} |"
        for name, row in rows
    ]
    out += [
        "",
        f"Tokens: p5 {_number(tokens['p5'])} · p50 {_number(tokens['p50'])} · p95 {_number(tokens['p95'])} · "
        f"total {_number(tokens['total'])} · {tokens['over_max_seq_length']:,} over max_seq_length "
        f"{tokens['max_seq_length']:,}.",
        f"Billed tokens ({kind}): {stats['epochs']} epochs × {_number(tokens['billed_per_epoch'])} "
        f"= {_number(stats['billed_tokens'])}.",
    ]
    return out


def _findings_markdown(report: Report, severity: Severity) -> list[str]:
    issues = report.by_severity(severity)
    if not issues:
        return []
    out = ["", f"### {_HEADINGS[severity]}", ""]
    shown: dict[str, int] = {}
    for issue in sorted(issues, key=lambda issue: issue.code):
        where = "file" if issue.line is None else f"line {issue.line:,}"
        out.append(f"- {where} `{issue.code}`: {issue.message}")
        shown[issue.code] = shown.get(issue.code, 0) + 1
        more = report.counts[issue.code] - shown[issue.code]
        if shown[issue.code] == report.options.samples_per_code and more:
            out.append(f"- … and {more:,} more `{issue.code}`")
    return out
