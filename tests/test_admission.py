"""Admission control over Azurite and the fake platform: training slots, the token cap, the endpoint cap."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from shared import admission
from shared.intake import handle_upload
from shared.naming import endpoint_name
from shared.platform.port import JobStatus
from shared.reconcile import reconcile
from shared.runs import RunState, use_clock
from shared.services import Services, use_services
from shared.slots import Slots
from tests.data import dataset
from tests.fakes.platform import WorkerKilled
from tests.test_rollout import complete, pump


def limited(services: Services, **limits) -> Services:
    built = Services(services.settings.model_copy(update=limits), services.storage, services.platform)
    use_services(built)
    return built


def upload(services: Services, name: str, start: int = 0, examples: int = 20):
    client = services.storage.blob(name)
    client.upload_blob(dataset(examples, start=start), overwrite=True)
    return handle_upload(client, services)


def finish(services: Services, fake, run_id: str, status: JobStatus = JobStatus.COMPLETED) -> None:
    record = services.runs.get(run_id)
    fake.set_job(record.job_name, status)
    complete(services, fake, record, status="Completed" if status is JobStatus.COMPLETED else "Failed")
    pump(services)


def training(services: Services) -> list[str]:
    return sorted(r.run_id for r in services.runs.all() if r.state in (RunState.SUBMITTED, RunState.TRAINING))


def test_uploads_beyond_the_cap_wait_and_are_submitted_in_upload_order(services: Services, fake_platform):
    services = limited(services, max_training_runs=2)
    outcomes = [upload(services, f"incoming/set-{i}.jsonl", start=i * 100) for i in range(5)]
    assert [o.action for o in outcomes] == ["submitted", "submitted", "queued", "queued", "queued"]
    ids = [o.run_id for o in outcomes]
    assert len(fake_platform.jobs) == 2
    assert services.runs.get(ids[2]).history[-1]["note"] == "waiting for one of 2 training slots"

    finish(services, fake_platform, ids[0])  # the slot it held goes to the oldest upload waiting
    assert training(services) == sorted([ids[1], ids[2]])
    finish(services, fake_platform, ids[1], JobStatus.FAILED)  # a failed job frees its slot too
    assert training(services) == sorted([ids[2], ids[3]])
    for run_id in ids[2:]:
        finish(services, fake_platform, run_id)
    assert all(services.runs.get(run_id).job_name for run_id in ids)
    assert sorted(fake_platform.jobs) == sorted(services.runs.get(run_id).job_name for run_id in ids)
    submitted_at = [
        next(h["at"] for h in services.runs.get(run_id).history if h["state"] == "submitted") for run_id in ids
    ]
    assert submitted_at == sorted(submitted_at)
    # The queue index holds only what waits: nothing now.
    assert list(services.storage.table.query_entities(f"PartitionKey eq '{admission.QUEUE}'")) == []


def test_concurrent_uploads_never_train_more_than_the_cap(services: Services, fake_platform):
    services = limited(services, max_training_runs=3)
    real, busiest, lock = fake_platform.submit_finetune, [0], threading.Lock()

    def slow_submit(request):
        time.sleep(0.05)  # widen the window between counting and submitting
        job = real(request)
        with lock:
            busiest[0] = max(busiest[0], len(training(services)) + 1)
        return job

    fake_platform.submit_finetune = slow_submit
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda i: upload(services, f"incoming/burst-{i}.jsonl", start=i * 100), range(12)))
    assert sum(o.action == "submitted" for o in outcomes) <= 3
    assert len(fake_platform.jobs) == 3
    assert len(training(services)) == 3
    assert sum(r.state is RunState.QUEUED for r in services.runs.all()) == 9
    index = [row["run_id"] for row in services.storage.table.query_entities(f"PartitionKey eq '{admission.QUEUE}'")]
    queued = sorted((r for r in services.runs.all() if r.state is RunState.QUEUED), key=admission.upload_order)
    assert index == [r.run_id for r in queued]  # the table returns the index in upload order


def test_a_run_killed_between_its_slot_and_its_submit_is_submitted_by_the_next_admission(
    services: Services, fake_platform
):
    services = limited(services, max_training_runs=1)
    real = fake_platform.submit_finetune

    def dies(request):
        raise WorkerKilled("after the slot was taken")

    fake_platform.submit_finetune = dies
    with pytest.raises(WorkerKilled):
        upload(services, "incoming/a.jsonl")
    (record,) = services.runs.all()
    assert record.state is RunState.QUEUED
    fake_platform.submit_finetune = real
    upload(services, "incoming/b.jsonl", start=100)  # a later upload: the slot is the first one's
    assert services.runs.get(record.run_id).state is RunState.QUEUED  # its slot is young: maybe in flight
    later = datetime.now(UTC) + timedelta(seconds=admission.SUBMIT_GRACE_S + 1)
    use_clock(lambda: later)
    try:
        checks = reconcile(services)
    finally:
        use_clock(None)
    assert services.runs.get(record.run_id).state is RunState.SUBMITTED, checks
    assert len(fake_platform.jobs) == 1


def test_a_dataset_over_the_token_cap_is_refused_with_a_report_that_says_why(services: Services, fake_platform):
    services = limited(services, max_training_tokens=1000)
    outcome = upload(services, "incoming/big.jsonl", examples=40)
    assert outcome.action == "refused"
    record = services.runs.get(outcome.run_id)
    assert record.state is RunState.REFUSED and not fake_platform.jobs
    assert "FTPILOT_MAX_TRAINING_TOKENS=1,000" in record.reason
    report = json.loads(services.storage.blob("reports/big.jsonl.validation.json").download_blob().readall())
    assert report["refused"]["setting"] == "FTPILOT_MAX_TRAINING_TOKENS"
    assert report["refused"]["value"] == report["stats"]["billed_tokens"] > 1000
    markdown = services.storage.blob("reports/big.jsonl.validation.md").download_blob().readall().decode()
    assert "Refused before training" in markdown and "FTPILOT_MAX_TRAINING_TOKENS" in markdown
    refused = next(e for e in record.unsent if e["type"] == "ftpilot.run.refused")
    assert refused["data"]["limit"] == {
        "setting": "FTPILOT_MAX_TRAINING_TOKENS",
        "maximum": 1000,
        "value": report["refused"]["value"],
    }

    services = limited(services, max_training_tokens=10_000_000)  # someone raised the cap: the same upload again
    again = upload(services, "incoming/big.jsonl", examples=40)
    assert (again.action, again.run_id) == ("submitted", outcome.run_id)
    assert len(fake_platform.jobs) == 1


def test_a_run_that_would_add_an_endpoint_past_the_cap_is_refused_before_deploying(services: Services, fake_platform):
    services = limited(services, max_endpoints=1)
    first = upload(services, "incoming/team-a.jsonl")
    finish(services, fake_platform, first.run_id)
    assert services.runs.get(first.run_id).state is RunState.LIVE

    second = upload(services, "incoming/team-b.jsonl", start=100)
    finish(services, fake_platform, second.run_id)
    refused = services.runs.get(second.run_id)
    assert refused.state is RunState.REFUSED, (refused.state, refused.reason)
    assert "FTPILOT_MAX_ENDPOINTS=1" in refused.reason
    assert refused.model_version  # registered, not deployed
    assert len(fake_platform.endpoints) == 1
    lease = services.leases.get(endpoint_name(refused.dataset))
    assert lease is not None and lease.holder == ""  # refused, it let the endpoint's lease go

    replacing = upload(services, "incoming/team-a.jsonl", start=200)  # a new model for the same endpoint
    finish(services, fake_platform, replacing.run_id)
    assert services.runs.get(replacing.run_id).state is RunState.LIVE


def test_the_endpoint_cap_frees_when_an_endpoint_goes(services: Services, fake_platform):
    services = limited(services, max_endpoints=1)
    first = upload(services, "incoming/team-a.jsonl")
    finish(services, fake_platform, first.run_id)
    live = services.runs.get(first.run_id)
    services.runs.update(live.run_id, lambda r: r.moved(RunState.RETIRED, "its endpoint was deleted"))
    fake_platform.begin_delete_endpoint(live.endpoint)
    second = upload(services, "incoming/team-b.jsonl", start=100)
    finish(services, fake_platform, second.run_id)
    now_live = services.runs.get(second.run_id)
    assert now_live.state is RunState.LIVE
    assert Slots(services.storage.table, admission.ENDPOINT_SLOTS).holders() == [now_live.endpoint]
