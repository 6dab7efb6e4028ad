"""Streaming validation of chat fine-tuning datasets (JSON Lines, ultrachat/OpenAI chat shape).

    from shared.validation import ValidationOptions, validate_path
    report = validate_path("train.jsonl", ValidationOptions.from_settings(settings))
    report.valid, report.sha256, report.to_dict(), report.to_markdown()

``iter_lines`` is the line framing validation uses, for code that must see exactly the
lines validation saw (the train/test splitter). The checks and their severities are
listed in ``CHECKS`` and explained in docs/validation.md.
"""

from shared.validation.codes import CHECKS, Check, Severity
from shared.validation.lines import LineTooLongError, iter_lines
from shared.validation.options import ValidationOptions
from shared.validation.report import Issue, Report, Sample
from shared.validation.validator import validate_chunks, validate_path

__all__ = [
    "CHECKS",
    "Check",
    "Issue",
    "LineTooLongError",
    "Report",
    "Sample",
    "Severity",
    "ValidationOptions",
    "iter_lines",
    "validate_chunks",
    "validate_path",
]
