"""Blob names: what counts as a dataset, and that derived names stay inside ftpilot's prefixes."""

from __future__ import annotations

import pytest

from shared.blobnames import Kind, classify, dataset_label, report_names, sidecar_name, unsafe_reason
from shared.config import Settings

SETTINGS = Settings(storage="UseDevelopmentStorage=true")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("incoming/chat.jsonl", Kind.DATASET),
        ("incoming/team/chat.jsonl", Kind.DATASET),
        ("incoming/données-été.jsonl", Kind.DATASET),
        ("incoming/chat.test.jsonl", Kind.SIDECAR),
        ("reports/chat.jsonl.validation.json", Kind.IGNORED),
        ("prepared/r/train.jsonl", Kind.IGNORED),
        ("other/chat.jsonl", Kind.IGNORED),
        ("incoming/../chat.jsonl", Kind.UNSAFE),
        ("incoming/\u2028line.jsonl", Kind.UNSAFE),
        ("incoming/\ue000private.jsonl", Kind.UNSAFE),
    ],
)
def test_classify(name: str, kind: Kind) -> None:
    assert classify(name, SETTINGS).kind is kind


def test_derived_names_stay_under_their_prefixes() -> None:
    upload = classify("incoming/team/chat.jsonl", SETTINGS)
    assert report_names(upload, SETTINGS) == (
        "reports/team/chat.jsonl.validation.json",
        "reports/team/chat.jsonl.validation.md",
    )
    refused = classify("incoming/../../x", SETTINGS)
    json_name, _ = report_names(refused, SETTINGS)
    assert json_name.startswith("reports/_refused/") and ".." not in json_name
    assert sidecar_name("incoming/chat.jsonl") == "incoming/chat.test.jsonl"


def test_unsafe_reasons_say_what() -> None:
    assert "U+202E" in unsafe_reason("a\u202eb")
    assert "'..'" in unsafe_reason("a/../b")
    assert "characters long" in unsafe_reason("x" * 513)
    assert unsafe_reason("incoming/ok name.jsonl") == ""


def test_prefix_settings_are_normalised() -> None:
    settings = Settings(storage="x", intake_prefix="/uploads", reports_prefix="")
    assert settings.intake_prefix == "uploads/"
    assert classify("uploads/a.jsonl", settings).kind is Kind.DATASET


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("incoming/Ultra Chat_200k.jsonl", "ultra-chat-200k"),
        ("incoming/été.jsonl", "ete"),
        ("incoming/日本.jsonl", "dataset"),
    ],
)
def test_dataset_label(name: str, label: str) -> None:
    assert dataset_label(name) == label
