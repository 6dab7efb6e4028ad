"""local.settings.sample.json is the settings reference: it must list exactly what Settings reads."""

from __future__ import annotations

import json

import pytest

from shared.config import Settings, load_local_settings
from tests.paths import REPO

SAMPLE = REPO / "local.settings.sample.json"
HOST_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"}


@pytest.fixture
def sample() -> dict:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def test_sample_lists_every_setting_and_nothing_else(sample: dict) -> None:
    expected = set(Settings.env_names().values()) | HOST_SETTINGS
    assert set(sample["Values"]) == expected
    assert set(sample["Descriptions"]) == expected


def test_every_setting_is_described_as_in_settings(sample: dict) -> None:
    names = Settings.env_names()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description"
        assert sample["Descriptions"][names[name]] == field.description


def test_sample_values_load_as_working_local_settings(sample: dict, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in sample["Values"]:
        monkeypatch.delenv(key, raising=False)
    copy = tmp_path / "local.settings.json"
    copy.write_text(SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    load_local_settings(copy)
    settings = Settings()
    assert settings.platform == "local"
    assert settings.subscription_id is None  # an empty value means unset
    assert settings.tokenizer is None
    assert settings.finetune_parameters == {"learning_rate": 0.002}


def test_a_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("FTPILOT_TEST_FRACTION", "1.5")
    with pytest.raises(ValidationError, match="test_fraction"):
        Settings()


@pytest.mark.parametrize("setting", ["FTPILOT_CLEANUP_SCHEDULE", "FTPILOT_RECONCILE_SCHEDULE"])
def test_a_five_field_cron_schedule_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv(setting, "*/5 * * * *")
    with pytest.raises(ValidationError, match=r"(?s)schedule.*has 5 fields; an NCRONTAB schedule has six"):
        Settings()
