"""The idle sweep announces a deletion before it makes it, and says what it saves."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from shared.cleanup import saves_per_day, sweep
from shared.naming import MANAGED_TAG, MANAGED_VALUE
from shared.runs import RunRecord, RunState
from shared.services import Services, use_services

WINDOW_S = 86400
NOTICE_S = WINDOW_S // 4  # the default: a quarter of the window


@pytest.fixture
def noticed(services: Services, fake_platform, clock) -> Services:
    """An idle live endpoint, its run live for two days, with the default notice period."""
    built = Services(services.settings.model_copy(update={"idle_notice_s": None}), services.storage, fake_platform)
    use_services(built)
    two_days_ago = (clock[0] - timedelta(days=2)).isoformat()
    fake_platform.add_endpoint("ft-idle", tags={MANAGED_TAG: MANAGED_VALUE}, created_at=two_days_ago)
    record = RunRecord(
        run_id="r-idle",
        dataset="incoming/idle.jsonl",
        sha256="s",
        endpoint="ft-idle",
        instance_type="Standard_NC24ads_A100_v4",
        instance_count=2,
    ).moved(RunState.LIVE)
    built.runs.claim(replace(record, history=[{**record.history[-1], "at": two_days_ago}]))
    return built


def events(services: Services, run_id: str = "r-idle") -> list[dict]:
    return services.runs.get(run_id).unsent


def test_an_idle_endpoint_is_announced_then_deleted_after_the_notice(noticed: Services, fake_platform, clock):
    (first,) = sweep(noticed)
    assert first.action == "announced"
    assert "ft-idle" in fake_platform.endpoints
    announced = events(noticed)[-1]
    assert announced["type"] == "ftpilot.run.idle_deletion_scheduled"
    idle = announced["data"]["idle"]
    expected_due = (clock[0] + timedelta(seconds=NOTICE_S)).isoformat(timespec="seconds")
    assert idle["deletion_due_at"] == first.deletion_due_at == expected_due
    assert (idle["instance_type"], idle["instance_count"]) == ("Standard_NC24ads_A100_v4", 2)
    assert (
        idle["usd_per_day"]
        == pytest.approx(3.673 * 2 * 24, abs=0.01)
        == saves_per_day(noticed.runs.get("r-idle"), noticed)
    )
    assert idle["prices_read_on"] == noticed.settings.prices_read_on
    assert "saves $176.30 a day" in first.reason

    clock[0] += timedelta(seconds=NOTICE_S - 60)
    (early,) = sweep(noticed)
    assert (early.action, early.deletion_due_at) == ("kept", expected_due)
    assert "ft-idle" in fake_platform.endpoints

    clock[0] += timedelta(seconds=120)
    (done,) = sweep(noticed)
    assert done.action == "deleted" and "ft-idle" in fake_platform.deleting()
    run = noticed.runs.get("r-idle")
    assert run.state is RunState.RETIRED
    kinds = [event["type"] for event in run.unsent]
    assert kinds == ["ftpilot.run.live", "ftpilot.run.idle_deletion_scheduled", "ftpilot.run.idle_deleted"]
    assert run.unsent[-1]["id"] == "r-idle.retired"
    assert run.unsent[-1]["data"]["idle"]["usd_per_day"] == idle["usd_per_day"]


def test_a_call_after_the_notice_withdraws_it(noticed: Services, fake_platform, clock):
    assert sweep(noticed)[0].action == "announced"
    clock[0] += timedelta(hours=1)
    fake_platform.set_requests("ft-idle", 3)
    (kept,) = sweep(noticed)
    assert kept.action == "kept" and "served 3 requests" in kept.reason
    run = noticed.runs.get("r-idle")
    assert run.idle_notice_at == "" and "withdrawn" in run.sweep_note

    clock[0] += timedelta(seconds=WINDOW_S - NOTICE_S + 60)  # idle again: a new notice, with an id of its own
    assert sweep(noticed)[0].action == "announced"
    notices = [e for e in events(noticed) if e["type"] == "ftpilot.run.idle_deletion_scheduled"]
    assert len(notices) == 2 and notices[0]["id"] != notices[1]["id"]
    assert "ft-idle" in fake_platform.endpoints


def test_a_call_the_shorter_quiet_window_misses_still_holds_the_deletion_off(noticed: Services, fake_platform, clock):
    """With a notice longer than half the window, the deletion checks the whole window once more."""
    long_notice = Services(
        noticed.settings.model_copy(update={"idle_notice_s": WINDOW_S * 3 // 4}), noticed.storage, fake_platform
    )
    use_services(long_notice)
    assert sweep(long_notice)[0].action == "announced"
    clock[0] += timedelta(minutes=1)
    fake_platform.set_requests("ft-idle", 1)  # someone calls right after the notice
    clock[0] += timedelta(seconds=WINDOW_S * 3 // 4)
    (kept,) = sweep(long_notice)
    assert kept.action == "kept" and "served 1 requests" in kept.reason
    assert "ft-idle" in fake_platform.endpoints
    assert long_notice.runs.get("r-idle").idle_notice_at == ""  # withdrawn: a later idle spell is announced anew


def test_a_size_without_a_price_says_so(noticed: Services, fake_platform):
    noticed.runs.update("r-idle", lambda r: replace(r, instance_type="Standard_Unpriced_v9"))
    (first,) = sweep(noticed)
    assert first.action == "announced" and "saves" not in first.reason
    assert events(noticed)[-1]["data"]["idle"]["usd_per_day"] is None


def test_dry_run_announces_nothing(noticed: Services, fake_platform):
    (first,) = sweep(noticed, dry_run=True)
    assert first.action == "would_announce"
    assert [e["type"] for e in events(noticed)] == ["ftpilot.run.live"]
    assert noticed.runs.get("r-idle").idle_notice_at == ""
