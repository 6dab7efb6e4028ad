"""What an uploaded blob name means to ftpilot, and the names derived from it.

Blob names are user input. A name with path tricks (``..`` segments, leading slashes,
backslashes, control or bidi characters, unassigned code points, absurd length) must never
steer a read or write outside ftpilot's prefixes, so such names are refused outright rather
than "cleaned" into something that might collide with another upload.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from shared.config import Settings

MAX_NAME_CHARS = 512  # Azure allows 1024; leave room for the report/prepared prefixes and suffixes.
SIDECAR_SUFFIX = ".test.jsonl"
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class Kind(StrEnum):
    DATASET = "dataset"
    SIDECAR = "sidecar"
    IGNORED = "ignored"
    UNSAFE = "unsafe"


@dataclass(frozen=True)
class Upload:
    """A classified blob name. ``relative`` is the name below the intake prefix."""

    name: str
    kind: Kind
    reason: str = ""
    relative: str = ""


def unsafe_reason(name: str) -> str:
    """Why ``name`` cannot be used to derive other blob names, or '' when it is fine."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"the name is {len(name)} characters long (at most {MAX_NAME_CHARS})"
    if name.startswith("/"):
        return "the name starts with '/'"
    if "\\" in name:
        return "the name contains a backslash"
    for char in name:
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            return f"the name contains the character U+{ord(char):04X} ({category}), a control or invisible character"
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "the name has an empty, '.' or '..' path segment"
    if any(segment != segment.strip() for segment in segments):
        return "a path segment starts or ends with whitespace"
    return ""


def classify(name: str, settings: Settings) -> Upload:
    """Decide whether ``name`` is a dataset to process, a sidecar, or none of ftpilot's business."""
    reason = unsafe_reason(name)
    if reason:
        return Upload(name, Kind.UNSAFE, reason)
    for own in (settings.reports_prefix, settings.prepared_prefix):
        if own and name.startswith(own):
            return Upload(name, Kind.IGNORED, f"ftpilot's own output under {own!r}")
    prefix = settings.intake_prefix
    if not name.startswith(prefix):
        return Upload(name, Kind.IGNORED, f"outside the intake prefix {prefix!r}")
    relative = name[len(prefix) :]
    if relative.endswith(SIDECAR_SUFFIX):
        return Upload(name, Kind.SIDECAR, "a test split, used by the dataset uploaded beside it", relative)
    return Upload(name, Kind.DATASET, relative=relative)


def sidecar_name(name: str) -> str:
    """``incoming/chat.jsonl`` -> ``incoming/chat.test.jsonl`` (the optional test split beside it)."""
    stem = name.removesuffix(".jsonl")
    return stem + SIDECAR_SUFFIX


def report_names(upload: Upload, settings: Settings) -> tuple[str, str]:
    """JSON and Markdown report names for an upload, beside it under the reports prefix."""
    if upload.kind is Kind.UNSAFE:
        digest = hashlib.sha256(upload.name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        base = f"{settings.reports_prefix}_refused/{digest}"
    else:
        base = f"{settings.reports_prefix}{upload.relative}"
    return f"{base}.validation.json", f"{base}.validation.md"


def promotion_report_names(validation_report: str) -> tuple[str, str]:
    """The promotion gate's JSON and Markdown reports, beside the run's validation report."""
    base = validation_report.removesuffix(".validation.json")
    return f"{base}.promotion.json", f"{base}.promotion.md"


def dataset_label(name: str, limit: int = 24) -> str:
    """A short lowercase slug of the file name, for job display names and model/endpoint names."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".jsonl")
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_stem.lower()).strip("-")
    return slug[:limit].strip("-") or "dataset"
