"""The idle sweep over a mixed fleet: only idle, old, managed, settled endpoints go."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from functions.cleanup import cleanup
from shared.cleanup import sweep
from shared.naming import KEEP_TAG, MANAGED_TAG, MANAGED_VALUE
from shared.platform.port import TransientError
from shared.runs import RunRecord, RunState
from shared.services import Services
from tests.counting import CountingTable
from tests.fakes.platform import WorkerKilled

MANAGED = {MANAGED_TAG: MANAGED_VALUE}


def ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat()


def run(services: Services, run_id: str, endpoint: str, state: RunState, since_h: float = 47) -> None:
    """A run in ``state`` since ``since_h`` hours ago (live for more than the default idle window)."""
    record = RunRecord(run_id=run_id, dataset=f"incoming/{run_id}.jsonl", sha256="s", endpoint=endpoint)
    moved = record.moved(state)
    services.runs.claim(replace(moved, history=[{**moved.history[-1], "at": ago(since_h)}]))


@pytest.fixture
def fleet(services: Services, fake_platform):
    fake = fake_platform
    fake.add_endpoint("ft-idle", tags=MANAGED, created_at=ago(48))
    fake.add_endpoint("ft-busy", tags=MANAGED, created_at=ago(48), requests=12)
    fake.add_endpoint("ft-young", tags=MANAGED, created_at=ago(0.1))
    fake.add_endpoint("ft-kept", tags={**MANAGED, KEEP_TAG: "true"}, created_at=ago(48))
    fake.add_endpoint("ft-rolling", tags=MANAGED, created_at=ago(48))
    fake.add_endpoint("team-prod", tags={"owner": "team"}, created_at=ago(500))
    fake.add_endpoint("untagged", tags={}, created_at=ago(500))
    fake.add_endpoint("lookalike", tags={MANAGED_TAG: "someone-else"}, created_at=ago(500))
    run(services, "r-idle", "ft-idle", RunState.LIVE)
    run(services, "r-busy", "ft-busy", RunState.LIVE)
    run(services, "r-rolling", "ft-rolling", RunState.SMOKE_TESTING)
    return fake


def test_mixed_fleet(services: Services, fleet) -> None:
    decisions = {d.endpoint: d for d in sweep(services)}

    assert fleet.standing() == {
        "ft-busy",
        "ft-young",
        "ft-kept",
        "ft-rolling",
        "team-prod",
        "untagged",
        "lookalike",
    }
    assert set(decisions) == {"ft-idle", "ft-busy", "ft-young", "ft-kept", "ft-rolling"}
    assert decisions["ft-idle"].action == "deleted"
    assert "served 12 requests" in decisions["ft-busy"].reason
    assert "grace period" in decisions["ft-young"].reason
    assert "opted out" in decisions["ft-kept"].reason
    assert "mid-rollout" in decisions["ft-rolling"].reason

    idle = services.runs.get("r-idle")
    assert idle.state is RunState.RETIRED
    assert "deleted" in idle.history[-1]["note"]
    assert "sweep: kept: served 12 requests" in services.runs.get("r-busy").sweep_note
    assert "mid-rollout" in services.runs.get("r-rolling").sweep_note
    assert services.runs.get("r-rolling").state is RunState.SMOKE_TESTING


def test_a_kept_endpoint_is_recorded_again_only_when_the_reason_changes(services: Services, fleet) -> None:
    sweep(services)
    busy, rolling = services.runs.get("r-busy"), services.runs.get("r-rolling")
    fleet.set_requests("ft-busy", 40)  # busier, but kept for the same reason
    sweep(services)
    assert services.runs.get("r-busy") == busy
    assert services.runs.get("r-rolling") == rolling

    fleet.set_requests("ft-busy", 0)  # now idle: that is news
    sweep(services)
    assert services.runs.get("r-busy").state is RunState.RETIRED


def test_unmanaged_endpoints_are_never_touched_whatever_their_traffic(services: Services, fake_platform) -> None:
    for i in range(20):
        fake_platform.add_endpoint(f"other-{i}", tags={"owner": "x"} if i % 2 else {}, created_at=ago(1000))
    assert sweep(services) == []
    assert len(fake_platform.endpoints) == 20
    assert fake_platform.calls["begin_delete_endpoint"] == 0


def test_dry_run_reports_and_deletes_nothing(services: Services, fleet) -> None:
    decisions = {d.endpoint: d for d in sweep(services, dry_run=True)}
    assert decisions["ft-idle"].action == "would_delete"
    assert "ft-idle" in fleet.endpoints
    assert services.runs.get("r-idle").state is RunState.LIVE


def test_dry_run_setting(services: Services, fleet) -> None:
    dry = Services(services.settings.model_copy(update={"cleanup_dry_run": True}), services.storage, fleet)
    assert {d.action for d in sweep(dry)} == {"would_delete", "kept"}
    assert "ft-idle" in fleet.endpoints


def test_failed_delete_is_recorded_and_retried_next_tick(services: Services, fleet) -> None:
    fleet.undeletable.add("ft-idle")
    first = {d.endpoint: d for d in sweep(services)}
    assert first["ft-idle"].action == "failed"
    assert "409 Conflict" in first["ft-idle"].reason
    assert "retried next tick" in services.runs.get("r-idle").sweep_note
    assert services.runs.get("r-idle").state is RunState.LIVE

    fleet.undeletable.clear()
    second = {d.endpoint: d for d in sweep(services)}
    assert second["ft-idle"].action == "deleted"
    assert "ft-idle" not in fleet.standing()


def _lose_the_answer(fake, how: str) -> None:
    """The next endpoint delete takes effect, and then its caller fails (``transient``) or dies (``killed``)."""
    if how == "killed":
        fake.kill_after = "begin_delete_endpoint"
        return
    delete = fake.begin_delete_endpoint

    def lost(name: str) -> None:
        delete(name)
        fake.begin_delete_endpoint = delete
        raise TransientError("injected: the answer to the delete was lost")

    fake.begin_delete_endpoint = lost


@pytest.mark.parametrize("how", ["transient", "killed"])
@pytest.mark.parametrize("gone_by_then", [False, True])
def test_a_delete_whose_answer_was_lost_retires_the_run_next_tick(
    services: Services, fleet, how: str, gone_by_then: bool
) -> None:
    _lose_the_answer(fleet, how)
    try:
        first = {d.endpoint: d for d in sweep(services)}
        assert first["ft-idle"].action == "failed"
    except WorkerKilled:
        pass
    assert services.runs.get("r-idle").state is RunState.LIVE  # the record never heard
    assert "ft-idle" in fleet.deleting()
    if gone_by_then:
        fleet.get_endpoint("ft-idle")
        fleet.get_endpoint("ft-idle")
        assert "ft-idle" not in fleet.endpoints
    deletes = fleet.calls["begin_delete_endpoint"]

    second = {d.endpoint: d for d in sweep(services)}
    assert second["ft-idle"].action == "deleted"
    reason = second["ft-idle"].reason
    if how == "killed":  # the note said what the sweep was deleting, and why
        assert reason.startswith("no requests in the last")
        assert reason.endswith("(the sweep that began it lost the answer)")
    else:  # the failure it reported
        assert reason.startswith("an earlier sweep's delete took effect (delete failed (TransientError")
    assert fleet.calls["begin_delete_endpoint"] == deletes  # not asked twice
    idle = services.runs.get("r-idle")
    assert idle.state is RunState.RETIRED
    assert idle.unsent[-1]["type"] == "ftpilot.run.idle_deleted"
    assert {d.endpoint: d.action for d in sweep(services)}.get("ft-idle", "gone") == "gone"
    assert services.runs.get("r-idle") == idle  # nothing more to say


@pytest.mark.parametrize("gone_by_then", [False, True])
def test_a_live_endpoint_deleted_by_someone_else_retires_its_run(
    services: Services, fake_platform, gone_by_then: bool
) -> None:
    fake_platform.add_endpoint("ft-live", tags=MANAGED, created_at=ago(48), requests=5)
    run(services, "r-live", "ft-live", RunState.LIVE)
    fake_platform.begin_delete_endpoint("ft-live")  # in the portal, say
    if gone_by_then:
        fake_platform.get_endpoint("ft-live")
        fake_platform.get_endpoint("ft-live")

    (decision,) = sweep(services)
    assert (decision.endpoint, decision.action, decision.run_id) == ("ft-live", "gone", "r-live")
    live = services.runs.get("r-live")
    assert live.state is RunState.RETIRED
    assert "deleted outside ftpilot" in live.reason
    assert live.unsent[-1]["type"] == "ftpilot.run.retired"
    assert fake_platform.calls["begin_delete_endpoint"] == 1


def test_a_live_endpoint_the_listing_missed_is_read_again_and_kept(
    services: Services, fake_platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_platform.add_endpoint("ft-new", tags=MANAGED, created_at=ago(48), requests=5)
    run(services, "r-new", "ft-new", RunState.LIVE)
    monkeypatch.setattr(fake_platform, "list_endpoints", lambda: [])  # listed before it was created
    assert sweep(services) == []
    assert services.runs.get("r-new").state is RunState.LIVE


def test_a_dry_run_reports_a_gone_endpoint_and_records_nothing(services: Services, fake_platform) -> None:
    fake_platform.add_endpoint("ft-live", tags=MANAGED, created_at=ago(48))
    run(services, "r-live", "ft-live", RunState.LIVE)
    fake_platform.begin_delete_endpoint("ft-live")
    before = services.runs.get("r-live")
    (decision,) = sweep(services, dry_run=True)
    assert decision.action == "gone"
    assert services.runs.get("r-live") == before


def test_deleting_an_idle_endpoint_writes_from_what_it_read(services: Services, fake_platform) -> None:
    """The lease taken and let go, the run's note, then its retirement: four writes and no point read."""
    fake_platform.add_endpoint("ft-idle", tags=MANAGED, created_at=ago(48))
    run(services, "r-idle", "ft-idle", RunState.LIVE)
    table = CountingTable(services.storage.table)
    services.storage.__dict__["table"] = table  # the cached client, counted
    counted = Services(services.settings, services.storage, fake_platform)

    (decision,) = sweep(counted)
    assert decision.action == "deleted"
    assert (table.reads, table.writes) == (0, 4)
    assert counted.runs.get("r-idle").state is RunState.RETIRED


def test_a_decision_a_run_did_not_hear_of_stops_nothing_and_is_heard_next_tick(services: Services, fleet) -> None:
    fleet.add_endpoint("ft-idle-2", tags=MANAGED, created_at=ago(48))
    run(services, "r-idle-2", "ft-idle-2", RunState.LIVE)
    table = CountingTable(services.storage.table)
    refused: list[str] = []

    def retiring_r_idle_once(entity) -> bool:  # the storage account has a moment, once
        if refused or entity["RowKey"] != "r-idle" or entity["state"] != RunState.RETIRED:
            return False
        refused.append(entity["RowKey"])
        return True

    table.refuse = retiring_r_idle_once
    services.storage.__dict__["table"] = table
    flaky = Services(services.settings, services.storage, fleet)

    first = {d.endpoint: d.action for d in sweep(flaky)}
    assert first["ft-idle"] == first["ft-idle-2"] == "deleted"
    assert (flaky.runs.get("r-idle").state, flaky.runs.get("r-idle-2").state) == (RunState.LIVE, RunState.RETIRED)

    second = {d.endpoint: d for d in sweep(flaky)}
    assert second["ft-idle"].action == "deleted" and "lost the answer" in second["ft-idle"].reason
    assert flaky.runs.get("r-idle").state is RunState.RETIRED


def test_endpoint_without_a_run_record_is_still_swept(services: Services, fake_platform) -> None:
    fake_platform.add_endpoint("ft-orphan", tags=MANAGED, created_at=ago(48))
    (decision,) = sweep(services)
    assert decision.action == "deleted" and decision.run_id == ""


def test_timer_function_runs_the_sweep(services: Services, fleet, app_functions: dict) -> None:
    from azure.functions.timer import TimerRequest

    (binding,) = app_functions["cleanup"].get_bindings_dict()["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "%FTPILOT_CLEANUP_SCHEDULE%"
    assert binding["runOnStartup"] is False
    cleanup(TimerRequest(past_due=False))  # the class the worker builds
    assert "ft-idle" in fleet.deleting()


def test_orphan_deployments_on_a_kept_endpoint_are_deleted_and_nothing_else(services: Services, fake_platform) -> None:
    from shared.platform.port import DeploymentInfo, ProvisioningState

    fake_platform.add_endpoint("ft-busy", tags=MANAGED, created_at=ago(48), requests=3)
    endpoint = fake_platform.endpoints["ft-busy"]
    for name, age in (("d-live", 48), ("d-rolling", 48), ("d-orphan", 48), ("d-fresh", 0.01)):
        endpoint.deployments[name] = DeploymentInfo("ft-busy", name, ProvisioningState.SUCCEEDED, created_at=ago(age))
    endpoint.info = replace(endpoint.info, traffic={"d-live": 100})
    for run_id, deployment, state in (("r-live", "d-live", RunState.LIVE), ("r-roll", "d-rolling", RunState.DEPLOYING)):
        record = RunRecord(run_id=run_id, dataset="incoming/x.jsonl", sha256="s", endpoint="ft-busy")
        services.runs.claim(record.moved(state, deployment=deployment))

    (decision,) = sweep(services)

    assert decision.action == "kept" and decision.orphans == ("d-orphan",)
    states = {name: d.state for name, d in endpoint.deployments.items()}
    assert states.pop("d-orphan") is ProvisioningState.DELETING
    assert set(states) == {"d-live", "d-rolling", "d-fresh"}  # the fresh one is inside the grace
    (again,) = sweep(services)
    assert again.orphans == ()  # asked once: it is being deleted
