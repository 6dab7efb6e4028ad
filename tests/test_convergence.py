"""One focused test per defect of issue #10, over Azurite's queue and table and the fake platform.

The seeded mix of all of them is ``test_compound_faults.py``; here each is pinned alone, at
the point where it used to go wrong, so a regression names itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from azure.functions.timer import TimerRequest

from functions.reconcile import reconcile
from functions.rollout import run_events
from shared import admission
from shared import rollout as rollout_mod
from shared.intake import handle_upload
from shared.leases import Grant, Leases
from shared.platform.port import JobStatus, PlatformConfigError, TransientError
from shared.rollout import accept_event, advance, give_up, stop
from shared.runs import TRANSITIONS, RunRecord, RunState, RunStore, use_clock
from shared.services import Services, use_services
from shared.status import rows
from tests.data import dataset
from tests.events import delivered, run_event
from tests.fakes.platform import WorkerKilled
from tests.test_rollout import assert_live, complete, pump, submit


def finish(services: Services, fake, record: RunRecord) -> None:
    fake.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake, record)
    pump(services)


def step_until(services: Services, run_id: str, done) -> RunRecord:
    """Advance one run message by message (as its re-check chain would) until ``done(record)``."""
    for _ in range(50):
        record = services.runs.get(run_id)
        if done(record):
            return record
        advance(orjson.dumps({"run_id": run_id, "token": record.poll_token}), services)
    raise AssertionError(f"run {run_id} never got there: {services.runs.get(run_id).state}")


# 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [PlatformConfigError("quota exceeded"), RuntimeError("connection reset")])
def test_duplicate_upload_whose_submit_fails_leaves_the_submitted_run_alone(
    services: Services, fake_platform, error
) -> None:
    """Two uploads of one content at once: one run, one job; a second submit that fails changes nothing."""
    content = dataset(20)
    for name in ("incoming/a.jsonl", "incoming/a-copy.jsonl"):
        services.storage.blob(name).upload_blob(content)
    real, calls, lock = fake_platform.submit_finetune, [], threading.Lock()

    def failing_after_the_first(request):
        with lock:
            calls.append(request.job_name)
            first = len(calls) == 1
        if first:
            return real(request)
        raise error

    fake_platform.submit_finetune = failing_after_the_first
    outcomes: list = []

    def upload(name: str) -> None:
        try:
            outcomes.append(handle_upload(services.storage.blob(name), services).action)
        except RuntimeError:
            outcomes.append("raised")

    threads = [threading.Thread(target=upload, args=(n,)) for n in ("incoming/a.jsonl", "incoming/a-copy.jsonl")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    (record,) = services.runs.all()
    assert record.state is RunState.SUBMITTED and record.job_name, (outcomes, record.state, record.reason)
    assert len(calls) == 1  # the run's slot holder submitted it; the duplicate upload did not
    # A late second submit of the same run (a worker with a stale view) fails: the run stays as it is.
    with contextlib.suppress(RuntimeError):
        admission.submit(replace(record, state=RunState.QUEUED), services)
    assert services.runs.get(record.run_id) == record
    fake_platform.submit_finetune = real
    finish(services, fake_platform, record)
    assert_live(services, fake_platform, record)


# 2 -----------------------------------------------------------------------------------------
def _fail_send_once(monkeypatch, when: str) -> list[str]:
    """Break the first re-check send (a message with a token) at ``when``."""
    real, hits = rollout_mod.send, []

    def send(services, message, delay_s=0):
        if message.get("token") and not hits:
            hits.append(when)
            if when == "send fails":
                raise ConnectionError("queue unreachable")
            real(services, message, delay_s)
            raise WorkerKilled("after the send, before the token is written")
        real(services, message, delay_s)

    monkeypatch.setattr(rollout_mod, "send", send)
    return hits


def _kill_after_token_write(monkeypatch) -> list[str]:
    real, hits = RunStore.update, []

    def update(self, run_id, change):
        updated = real(self, run_id, change)
        if updated.poll_token and not hits:
            hits.append("token written")
            raise WorkerKilled("after the token write, before the message is done")
        return updated

    monkeypatch.setattr(RunStore, "update", update)
    return hits


@pytest.mark.parametrize("point", ["send fails", "killed after the send", "killed after the token write"])
def test_a_broken_recheck_is_recovered_by_redelivery(services: Services, fake_platform, monkeypatch, point) -> None:
    record = submit(services)
    hits = _kill_after_token_write(monkeypatch) if point.endswith("write") else _fail_send_once(monkeypatch, point)
    finish(services, fake_platform, record)
    assert hits, "the fault point was never reached"
    assert_live(services, fake_platform, record)


def test_a_lost_recheck_is_recovered_by_the_reconciler(
    services: Services, fake_platform, clock, caplog: pytest.LogCaptureFixture
) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    queue = services.storage.queue
    message = queue.receive_message()  # deliver the event's message, then lose every re-check
    advance(message.content, services)
    queue.delete_message(message)
    queue.clear_messages()
    stalled = services.runs.get(record.run_id)
    assert stalled.state is RunState.DEPLOYING and stalled.poll_token

    clock[0] += timedelta(seconds=services.settings.reconcile_rollout_s + 1)
    with caplog.at_level(logging.INFO, logger="shared.reconcile"):
        reconcile(TimerRequest(past_due=False))
    (requeued,) = [r for r in caplog.records if "re-queued" in r.getMessage()]
    assert requeued.levelno == logging.WARNING  # a lost message is worth someone's look
    pump(services)
    assert_live(services, fake_platform, record)


def test_the_deploy_deadline_holds_when_no_message_comes(services: Services, fake_platform, clock) -> None:
    record = submit(services)
    fake_platform.stuck_deployments = True
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    step_until(services, record.run_id, lambda r: r.state is RunState.DEPLOYING and r.poll_token)
    services.storage.queue.clear_messages()

    clock[0] += timedelta(seconds=services.settings.deploy_timeout_s + 1)
    reconcile(TimerRequest(past_due=False))
    pump(services)
    final = services.runs.get(record.run_id)
    assert final.state is RunState.ROLLED_BACK and "did not finish within" in final.reason
    assert fake_platform.endpoints == {}  # nothing left billing


# 3 -----------------------------------------------------------------------------------------
def _live_then_promoting(services: Services, fake) -> tuple[RunRecord, RunRecord]:
    first = submit(services)
    finish(services, fake, first)
    first = services.runs.get(first.run_id)
    second = submit(services, start=100)
    fake.set_job(second.job_name, JobStatus.COMPLETED)
    complete(services, fake, second)
    services.storage.queue.clear_messages()
    promoting = step_until(
        services,
        second.run_id,
        lambda r: r.state is RunState.PROMOTING and fake.endpoints[r.endpoint].info.traffic.get(r.deployment) == 100,
    )
    return first, promoting


def test_rollback_from_promoting_gives_the_traffic_back_first(services: Services, fake_platform) -> None:
    first, promoting = _live_then_promoting(services, fake_platform)
    assert promoting.replaces == first.deployment

    stop(promoting, services, "rollout gave up after repeated failures: test")
    pump(services)

    final = services.runs.get(promoting.run_id)
    assert final.state is RunState.ROLLED_BACK, (final.state, final.last_error)
    assert fake_platform.live_deployments() == [(first.endpoint, first.deployment)]
    assert fake_platform.endpoints[first.endpoint].info.traffic == {first.deployment: 100}
    assert services.runs.get(first.run_id).state is RunState.LIVE
    assert [h["state"] for h in final.history][-2:] == ["rolling_back", "rolled_back"]


def test_a_deployment_the_platform_no_longer_knows_ends_the_rollout_with_that_reason(
    services: Services, fake_platform
) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    services.storage.queue.clear_messages()
    promoting = step_until(services, record.run_id, lambda r: r.state is RunState.PROMOTING)
    endpoint = fake_platform.endpoints[promoting.endpoint]
    endpoint.deployments.pop(promoting.deployment)  # deleted by hand
    endpoint.info = replace(endpoint.info, traffic={})
    pump(services)
    final = services.runs.get(record.run_id)
    assert final.state is RunState.ROLLED_BACK and "no longer exists" in final.reason
    assert fake_platform.endpoints == {}


# 4 -----------------------------------------------------------------------------------------
def test_a_resumed_promote_retires_the_run_it_replaced(services: Services, fake_platform) -> None:
    first = submit(services)
    finish(services, fake_platform, first)
    second = submit(services, start=100)
    fake_platform.kill_after = "begin_delete_deployment"  # dies right after deleting the old deployment
    finish(services, fake_platform, second)

    assert fake_platform.kill_after is None
    runs = {r.run_id: r for r in services.runs.all()}
    assert runs[first.run_id].state is RunState.RETIRED
    assert runs[second.run_id].state is RunState.LIVE
    assert fake_platform.live_deployments() == [(runs[second.run_id].endpoint, runs[second.run_id].deployment)]


# 5 -----------------------------------------------------------------------------------------
def test_rollouts_to_one_endpoint_are_serialised_and_the_newest_wins(services: Services, fake_platform) -> None:
    older = submit(services)
    fake_platform.set_job(older.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, older)
    services.storage.queue.clear_messages()
    step_until(services, older.run_id, lambda r: r.state is RunState.DEPLOYING)  # holds the lease, mid-rollout

    newer = submit(services, start=100)
    fake_platform.set_job(newer.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, newer)
    pump(services)  # the newer one waits; the older one steps aside on its next check
    pump(services)

    runs = {r.run_id: r for r in services.runs.all()}
    assert runs[older.run_id].state is RunState.SUPERSEDED, runs[older.run_id]
    assert newer.run_id in runs[older.run_id].reason
    final = runs[newer.run_id]
    assert final.state is RunState.LIVE
    assert fake_platform.live_deployments() == [(final.endpoint, final.deployment)]
    assert Leases(services.storage.table).get(final.endpoint).holder == ""


def test_an_older_run_still_training_is_canceled_when_a_newer_one_goes_live(services: Services, fake_platform) -> None:
    older = submit(services)
    newer = submit(services, start=100)
    finish(services, fake_platform, newer)
    final = services.runs.get(older.run_id)
    assert final.state is RunState.SUPERSEDED and "canceled" in final.reason
    assert fake_platform.jobs[older.job_name].status is JobStatus.CANCELED


def test_an_older_run_finishing_after_a_newer_one_is_live_never_deploys(services: Services, fake_platform) -> None:
    older = submit(services)
    newer = submit(services, start=100)
    fake_platform.set_job(older.job_name, JobStatus.COMPLETED)  # done, but its event is late
    finish(services, fake_platform, newer)
    complete(services, fake_platform, older)
    pump(services)
    assert services.runs.get(older.run_id).state is RunState.SUPERSEDED
    assert services.runs.get(newer.run_id).state is RunState.LIVE
    assert len(fake_platform.live_deployments()) == 1


def test_a_rollout_whose_lease_the_sweep_holds_for_a_moment_waits(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    services.storage.queue.clear_messages()
    deploying = step_until(services, record.run_id, lambda r: r.state is RunState.DEPLOYING)
    leases = Leases(services.storage.table)
    leases.release(deploying.endpoint, record.run_id)  # released under it (a reconciler misjudged)
    with leases.holding(deploying.endpoint, "sweep:test") as held:
        assert held
        result = advance(orjson.dumps({"run_id": record.run_id, "token": deploying.poll_token}), services)
        assert result.action == "waiting" and "held by sweep:test" in result.reason
        assert services.runs.get(record.run_id).state is RunState.DEPLOYING

    assert leases.get(deploying.endpoint).holder == ""  # let go, though the run asked meanwhile
    pump(services)
    assert_live(services, fake_platform, record)


# 6 -----------------------------------------------------------------------------------------
def test_the_sweep_keeps_an_endpoint_a_rollout_takes_during_its_metrics_call(services: Services, fake_platform) -> None:
    from shared.cleanup import sweep

    services = Services(services.settings.model_copy(update={"cleanup_grace_s": 0}), services.storage, fake_platform)
    use_services(services)
    first = submit(services)
    finish(services, fake_platform, first)
    first = services.runs.get(first.run_id)
    fake_platform.set_requests(first.endpoint, 0)  # idle: a candidate
    second = submit(services, start=100)
    fake_platform.set_job(second.job_name, JobStatus.COMPLETED)
    real = fake_platform.endpoint_requests

    def slow_metrics(name, window_s):  # meanwhile, the second run starts rolling out
        assert Leases(services.storage.table).acquire(name, services.runs.get(second.run_id)) is Grant.HELD
        return real(name, window_s)

    fake_platform.endpoint_requests = slow_metrics
    use_clock(lambda: datetime.now(UTC) + timedelta(seconds=services.settings.idle_window_s + 1))  # live a day
    try:
        (decision,) = sweep(services)
    finally:
        use_clock(None)
    assert decision.action == "kept" and "rollout" in decision.reason
    assert first.endpoint in fake_platform.endpoints


# 7 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", [*sorted(s for s in RunState if s.terminal), RunState.LIVE])
def test_a_poison_message_leaves_an_ended_run_as_it_is(services: Services, state) -> None:
    record = RunRecord(run_id="r1", dataset="incoming/x.jsonl", sha256="s", last_error="boom").moved(state)
    services.runs.claim(record)
    give_up(orjson.dumps({"run_id": "r1"}), services)
    assert services.runs.get("r1").state is state


def test_illegal_transitions_are_refused_not_written(services: Services, caplog) -> None:
    services.runs.claim(RunRecord(run_id="r2", dataset="incoming/x.jsonl", sha256="s").moved(RunState.RETIRED))
    after = services.runs.update("r2", lambda r: r.moved(RunState.FAILED, reason="late poison"))
    assert after.state is RunState.RETIRED and services.runs.get("r2").state is RunState.RETIRED
    assert "retired -> failed is not a legal transition" in caplog.text
    assert all(s.terminal or TRANSITIONS[s] for s in RunState if s is not RunState.LIVE)


# 8 -----------------------------------------------------------------------------------------
def test_five_503s_on_get_job_do_not_fail_a_training_run(services: Services, fake_platform) -> None:
    record = submit(services)
    real, errors = fake_platform.get_job, [0]

    def flaky(name):
        if errors[0] < 5:
            errors[0] += 1
            raise TransientError("503 Service Unavailable", retry_after_s=0)
        return real(name)

    fake_platform.get_job = flaky
    for _ in range(5):
        run_events(delivered(run_event(services.settings.topic, record.job_name, "Running", event_id=f"r{_}")))
        pump(services)
    waiting = services.runs.get(record.run_id)
    assert errors[0] == 5 and waiting.state is RunState.TRAINING
    assert fake_platform.jobs[record.job_name].status is JobStatus.QUEUED  # not canceled
    finish(services, fake_platform, record)
    final = assert_live(services, fake_platform, record)
    assert final.last_error == ""


def test_one_503_from_the_scoring_uri_does_not_roll_back(services: Services, fake_platform) -> None:
    record = submit(services)
    real, errors = fake_platform.invoke, [0]

    def warming_up(*args, **kwargs):
        if not errors[0]:
            errors[0] += 1
            raise TransientError("scoring answered HTTP 503: warming up")
        return real(*args, **kwargs)

    fake_platform.invoke = warming_up
    finish(services, fake_platform, record)
    assert errors[0] == 1
    assert_live(services, fake_platform, record)


# 9 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("job", ["ftpilot-a/b", "ftpilot-" + "0" * 19 + "'", "ftpilot-" + "A" * 20, "other-job"])
def test_event_run_ids_are_checked_before_any_storage_call(services: Services, monkeypatch, job) -> None:
    def no_storage(*args, **kwargs):
        raise AssertionError("the run table was consulted")

    monkeypatch.setattr(services.runs, "get", no_storage)
    result = accept_event(run_event(services.settings.topic, job), services)
    assert result.action == "dropped" and "not one of ftpilot's job names" in result.reason


# 10 ----------------------------------------------------------------------------------------
def test_status_of_a_healthy_live_run_shows_no_old_error(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.kill_after = "get_deployment"
    real, errors = fake_platform.get_endpoint, [0]

    def once(name):
        if not errors[0]:
            errors[0] += 1
            raise TransientError("429 Too Many Requests", retry_after_s=0)
        return real(name)

    fake_platform.get_endpoint = once
    finish(services, fake_platform, record)
    (row,) = rows(services.runs.all())
    assert row.state == "live" and row.reason == "" and row.waiting_for == ""


def test_status_says_what_a_run_waits_for_and_since_when(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.stuck_deployments = True
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    step_until(services, record.run_id, lambda r: r.state is RunState.DEPLOYING and "deployment" in r.waiting_for)
    (row,) = rows(services.runs.all())
    assert row.waiting_for.startswith("deployment d-") and row.waiting_since


# 11 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "ends"), [(JobStatus.COMPLETED, RunState.LIVE), (JobStatus.CANCELED, RunState.CANCELED)]
)
def test_a_run_whose_events_never_come_is_found_by_the_reconciler(
    services: Services, fake_platform, clock, status, ends, *, caplog: pytest.LogCaptureFixture
) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, status)  # and no event at all
    reconcile(TimerRequest(past_due=False))
    assert len(list(services.storage.queue.peek_messages())) == 0  # too soon: nothing overdue

    clock[0] += timedelta(seconds=services.settings.reconcile_training_s + 1)
    with caplog.at_level(logging.INFO, logger="shared.reconcile"):
        reconcile(TimerRequest(past_due=False))
    (requeued,) = [r for r in caplog.records if "re-queued" in r.getMessage()]
    assert requeued.levelno == logging.INFO  # a training job's periodic check is routine, not a warning
    pump(services)
    assert services.runs.get(record.run_id).state is ends


def test_a_job_past_the_training_deadline_is_canceled(services: Services, fake_platform, clock) -> None:
    record = submit(services)
    clock[0] += timedelta(seconds=services.settings.max_training_s + 1)
    reconcile(TimerRequest(past_due=False))
    pump(services)
    final = services.runs.get(record.run_id)
    assert final.state is RunState.FAILED and "canceled" in final.reason
    assert fake_platform.jobs[record.job_name].status is JobStatus.CANCELED


def test_one_reconciler_tick_is_bounded(services: Services, fake_platform, clock) -> None:
    changes = {"reconcile_batch": 2, "max_training_runs": 5}
    bounded = Services(services.settings.model_copy(update=changes), services.storage, fake_platform)
    use_services(bounded)
    for start in range(0, 500, 100):
        submit(bounded, name=f"incoming/set{start}.jsonl", start=start)
    clock[0] += timedelta(seconds=bounded.settings.reconcile_training_s + 1)
    from shared.reconcile import reconcile as tick

    assert [c.action for c in tick(bounded) if c.action != "events"] == ["requeued", "requeued"]


def test_the_reconciler_releases_a_lease_whose_holder_ended(services: Services, fake_platform) -> None:
    from shared.reconcile import reconcile as tick

    record = submit(services)
    finish(services, fake_platform, record)
    live = services.runs.get(record.run_id)
    leases = Leases(services.storage.table)
    leases._change(live.endpoint, lambda lease: type(lease)(lease.endpoint, holder=live.run_id))  # a kill left it
    assert [c.action for c in tick(services) if c.action != "events"] == ["released"]
    assert leases.get(live.endpoint).holder == "" and leases.get(live.endpoint).champion == live.run_id


def test_the_reconciler_is_a_timer_function_on_its_own_schedule(app_functions: dict) -> None:
    (binding,) = app_functions["reconcile"].get_bindings_dict()["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "%FTPILOT_RECONCILE_SCHEDULE%"
    assert binding["runOnStartup"] is False
