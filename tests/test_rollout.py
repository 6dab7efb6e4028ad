"""Rollout over Azurite's queue and table, against the fake platform: events to a live endpoint."""

from __future__ import annotations

import random
import threading
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import pytest

from functions.rollout import rollout, rollout_poison, run_events
from shared.host.queues import deliver
from shared.intake import handle_upload
from shared.platform.port import JobStatus, PlatformError, ProvisioningState
from shared.reconcile import reconcile
from shared.rollout import POISON_LIMIT
from shared.runs import RunRecord, RunState, use_clock
from shared.services import Services, use_services
from tests.data import dataset
from tests.events import delivered, run_event
from tests.fakes.platform import WorkerKilled


def submit(services: Services, name: str = "incoming/chat.jsonl", start: int = 0) -> RunRecord:
    client = services.storage.blob(name)
    client.upload_blob(dataset(20, start=start), overwrite=True)
    outcome = handle_upload(client, services)
    assert outcome.action == "submitted"
    return services.runs.get(outcome.run_id)


def pump(services: Services, timeout_s: float = 60) -> None:
    """Run the queue workers until no message is left, visible or not (as the host would)."""
    queue = services.storage.queue
    poison = services.storage.poison_queue
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(WorkerKilled):  # the message stays; it becomes visible again, as after a crash
            deliver(queue, rollout, poison=poison, visibility_timeout=1)
        deliver(poison, rollout_poison, visibility_timeout=1)
        left = queue.get_queue_properties().approximate_message_count
        if not left and not poison.get_queue_properties().approximate_message_count:
            return
        time.sleep(0.2)
    raise AssertionError("the rollout queue did not drain")


def complete(services: Services, fake, record: RunRecord, status: str = "Completed", **kwargs) -> None:
    run_events(delivered(run_event(services.settings.topic, record.job_name, status, **kwargs)))


def assert_live(services: Services, fake, record: RunRecord) -> RunRecord:
    final = services.runs.get(record.run_id)
    assert final.state is RunState.LIVE, (final.state, final.reason, final.last_error)
    assert len(fake.models) == 1
    assert fake.live_deployments() == [(final.endpoint, final.deployment)]
    assert fake.endpoints[final.endpoint].info.traffic == {final.deployment: 100}
    assert final.metrics == {"train_loss": 1.5, "eval_loss": 1.75}
    assert final.poll_token == ""
    return final


def test_completed_job_goes_live(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)

    complete(services, fake_platform, record)
    pump(services)

    final = assert_live(services, fake_platform, record)
    states = [h["state"] for h in final.history]
    for expected in ("succeeded", "registered", "deploying", "smoke_testing", "promoting", "live"):
        assert expected in states
    ((name, version),) = fake_platform.models
    assert name == "phi-3-mini-4k-instruct-chat" and version == "1"  # workspace versions are integers
    assert (final.model_name, final.model_version) == (name, version)
    assert fake_platform.models[(name, version)].tags["ftpilot-job"] == record.job_name
    assert fake_platform.models[(name, version)].tags["ftpilot-run"] == record.run_id
    endpoint = fake_platform.endpoints[final.endpoint]
    assert endpoint.info.tags["managed-by"] == "ftpilot"
    # The smoke test and the promotion gate (the first model: its test questions, no champion),
    # all on the record for the idle sweep to discount.
    assert endpoint.requests == final.probe_requests == 1 + final.promotion["samples"]
    assert final.promotion["decision"] == "promoted"


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_events_delivered_three_times_concurrently_and_shuffled(services: Services, fake_platform, schema) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    topic = services.settings.topic
    events = [
        run_event(topic, record.job_name, status, schema=schema, event_id=f"{status}-{i}")
        for status in ("Running", "Completed", "Completed")
        for i in range(3)
    ]
    random.Random(7).shuffle(events)
    threads = [threading.Thread(target=run_events, args=(delivered(e),)) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    pump(services)

    assert_live(services, fake_platform, record)
    assert fake_platform.calls["register_model"] >= 1
    assert fake_platform.calls["begin_create_deployment"] == 1


KILL_POINTS = [
    "get_job",
    "get_job_metrics",
    "register_model",
    "begin_create_endpoint",
    "get_endpoint",
    "begin_create_deployment",
    "get_deployment",
    "invoke",
    "begin_set_traffic",
]


@pytest.mark.parametrize("kill_after", KILL_POINTS)
def test_worker_killed_after_each_step_resumes_to_live(services: Services, fake_platform, kill_after) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    fake_platform.kill_after = kill_after

    complete(services, fake_platform, record)
    pump(services)

    assert fake_platform.kill_after is None, "the kill point was never reached"
    assert_live(services, fake_platform, record)


def test_second_run_replaces_the_first_deployment(services: Services, fake_platform) -> None:
    first = submit(services)
    fake_platform.set_job(first.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, first)
    pump(services)

    second = submit(services, start=100)
    fake_platform.set_job(second.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, second)
    pump(services)

    new = services.runs.get(second.run_id)
    old = services.runs.get(first.run_id)
    assert new.state is RunState.LIVE and new.endpoint == old.endpoint
    assert old.state is RunState.RETIRED
    assert old.reason == f"replaced by run {new.run_id}"  # what status shows for it
    assert fake_platform.live_deployments() == [(new.endpoint, new.deployment)]
    assert fake_platform.endpoints[new.endpoint].info.traffic == {new.deployment: 100}


def test_failed_job_is_recorded_and_never_deployed(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.FAILED, error="CUDA out of memory in finetune step")
    complete(services, fake_platform, record, status="Failed")
    pump(services)

    final = services.runs.get(record.run_id)
    assert final.state is RunState.FAILED
    assert "CUDA out of memory" in final.reason
    assert fake_platform.models == {} and fake_platform.endpoints == {}


def test_canceled_job_is_recorded(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.CANCELED)
    complete(services, fake_platform, record, status="Canceled")
    pump(services)
    assert services.runs.get(record.run_id).state is RunState.CANCELED
    assert fake_platform.endpoints == {}


def test_running_event_only_moves_to_training(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.RUNNING)
    complete(services, fake_platform, record, status="Running")
    pump(services)
    assert services.runs.get(record.run_id).state is RunState.TRAINING
    assert fake_platform.models == {}


def test_completed_event_before_the_job_says_so_waits(services: Services, fake_platform) -> None:
    """Out of order: the event claims Completed, the platform still says Running: trust the platform."""
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.RUNNING)
    complete(services, fake_platform, record)
    pump(services)
    assert services.runs.get(record.run_id).state is RunState.TRAINING
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    pump(services)
    assert_live(services, fake_platform, record)


def test_deployment_that_fails_provisioning_leaves_nothing_billing(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    fake_platform.fail_deployments = True
    complete(services, fake_platform, record)
    pump(services)

    final = services.runs.get(record.run_id)
    assert final.state is RunState.ROLLED_BACK
    assert "OutOfQuota" in final.reason
    assert fake_platform.endpoints == {}


def test_instance_type_the_base_model_cannot_serve_on_rolls_back_at_once(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    fake_platform.inference_allow_list[services.settings.base_model] = ["Standard_NC24ads_A100_v4"]
    complete(services, fake_platform, record)
    pump(services)

    final = services.runs.get(record.run_id)
    assert final.state is RunState.ROLLED_BACK
    assert final.reason.startswith("cannot deploy: instance type Standard_NC6s_v3")
    assert fake_platform.endpoints == {}  # the endpoint made for this run is gone too
    assert fake_platform.calls["begin_create_deployment"] == 0


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"output": "   "}, "empty"),
        ({"output": []}, "empty"),
        ({"result": "x"}, "no 'output'"),
        (PlatformError("HTTP 500 from the scoring endpoint"), "HTTP 500"),
        (PlatformError("timed out after 90 s"), "timed out"),
    ],
)
def test_failed_smoke_test_rolls_back_and_keeps_traffic(services: Services, fake_platform, answer, why) -> None:
    first = submit(services)
    fake_platform.set_job(first.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, first)
    pump(services)
    live = services.runs.get(first.run_id)

    fake_platform.answer = answer
    second = submit(services, start=100)
    fake_platform.set_job(second.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, second)
    pump(services)

    final = services.runs.get(second.run_id)
    assert final.state is RunState.ROLLED_BACK
    assert why in final.reason
    assert fake_platform.live_deployments() == [(live.endpoint, live.deployment)]
    assert fake_platform.endpoints[live.endpoint].info.traffic == {live.deployment: 100}
    assert services.runs.get(first.run_id).state is RunState.LIVE


def test_one_empty_smoke_answer_is_asked_again(services: Services, fake_platform) -> None:
    """The smoke test samples: one empty answer can be chance; only ``smoke_attempts`` in a row fail it."""
    answers = [{"output": ""}]

    def first_empty(deployment: str, conversation: list[dict[str, str]]) -> dict[str, str]:
        return answers.pop() if answers else {"output": "Tides come from the moon's pull."}

    fake_platform.answer = first_empty
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    pump(services)
    final = services.runs.get(record.run_id)
    assert final.state is RunState.LIVE, (final.state, final.reason)
    smoke = [h for h in final.history if h["state"] == "smoke_testing"]
    assert smoke  # it was asked again, not rolled back


def test_smoke_test_output_as_a_list_passes(services: Services, fake_platform) -> None:
    fake_platform.answer = {"output": ["A tide is a wave."]}
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    pump(services)
    assert_live(services, fake_platform, record)


def test_poison_message_ends_in_a_recorded_failure(services: Services, fake_platform, monkeypatch) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)

    def broken(*args, **kwargs):
        raise RuntimeError("registry unreachable")

    monkeypatch.setattr(fake_platform, "register_model", broken)
    complete(services, fake_platform, record)
    pump(services, timeout_s=90)
    assert services.runs.get(record.run_id).state is RunState.SUCCEEDED  # poisoned once: left to the reconciler

    later = [datetime.now(UTC)]
    use_clock(lambda: later[0])
    try:
        for _ in range(POISON_LIMIT - 1):
            later[0] += timedelta(seconds=services.settings.reconcile_rollout_s + 1)
            reconcile(services)
            pump(services, timeout_s=90)
    finally:
        use_clock(None)

    final = services.runs.get(record.run_id)
    assert final.state is RunState.FAILED
    assert "gave up" in final.reason and "registry unreachable" in final.reason


def test_deployment_stuck_past_the_timeout_rolls_back(services: Services, fake_platform) -> None:
    first = submit(services)
    fake_platform.set_job(first.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, first)
    pump(services)
    live = services.runs.get(first.run_id)

    impatient = Services(services.settings.model_copy(update={"deploy_timeout_s": 1}), services.storage, fake_platform)
    use_services(impatient)
    fake_platform.stuck_deployments = True
    second = submit(impatient, start=100)
    fake_platform.set_job(second.job_name, JobStatus.COMPLETED)
    complete(impatient, fake_platform, second)
    pump(impatient)

    final = services.runs.get(second.run_id)
    assert final.state is RunState.ROLLED_BACK and "did not finish within 1 s" in final.reason
    assert fake_platform.live_deployments() == [(live.endpoint, live.deployment)]
    assert fake_platform.endpoints[live.endpoint].info.traffic == {live.deployment: 100}


def test_keys_never_reach_records(services: Services, fake_platform) -> None:
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    pump(services)
    entity = services.storage.table.get_entity("run", record.run_id)
    assert services.runs.get(record.run_id).state is RunState.LIVE
    assert not [name for name in entity if "key" in name.lower() and name not in ("PartitionKey", "RowKey")]


def test_endpoint_state_waits_for_provisioning(services: Services, fake_platform) -> None:
    """Nothing waits in-process: after the first message the endpoint is still creating."""
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake_platform, record)
    deliver(services.storage.queue, rollout, poison=services.storage.poison_queue, visibility_timeout=1)
    mid = services.runs.get(record.run_id)
    assert mid.state is RunState.DEPLOYING
    assert fake_platform.endpoints[mid.endpoint].info.state is ProvisioningState.CREATING
    assert mid.poll_token
    pump(services)
    assert_live(services, fake_platform, record)
