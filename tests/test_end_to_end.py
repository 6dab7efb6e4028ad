"""The whole product on one machine, the way `make demo` runs it: no fakes anywhere.

Azurite over its real protocol, the functions as the Functions host would call them (through
the local host), the local workspace training a real LoRA adapter in a separate process, MLflow's
registry, a uvicorn endpoint with a key, and the idle sweep deleting it. The second test stops
the host in the middle of a rollout and proves a new host takes the run the rest of the way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from shared.config import Settings
from shared.host.runner import LocalHost
from shared.runs import RunRecord, RunState
from shared.status import StatusRow
from tests.data import dataset
from tests.test_lifecycle import SECRET as WEBHOOK_SECRET
from tests.test_lifecycle import Receiver, by_id, serve, webhook_handler

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),  # MLflow's own store
]

# The stand-in model starts from random weights: the walkthrough's 5e-6 would teach it nothing.
TRAIN_PARAMETERS = {"num_train_epochs": 1, "learning_rate": 2e-3}
LIVE_TIMEOUT_S = 480
FAILED = {RunState.INVALID, RunState.SUBMIT_FAILED, RunState.FAILED, RunState.CANCELED, RunState.ROLLED_BACK}
HAPPY_PATH = [
    RunState.RECEIVED,
    RunState.QUEUED,
    RunState.SUBMITTED,
    RunState.TRAINING,
    RunState.SUCCEEDED,
    RunState.REGISTERED,
    RunState.DEPLOYING,
    RunState.SMOKE_TESTING,
    RunState.GATING,
    RunState.PROMOTING,
    RunState.LIVE,
]


def local_settings(settings: Settings, **changes: object) -> Settings:
    """The test's Azurite names and data folder, with the demo's short waits."""
    return settings.model_copy(
        update={
            "finetune_parameters": TRAIN_PARAMETERS,
            "poll_interval_s": 1,
            "cleanup_schedule": "*/2 * * * * *",
            "cleanup_grace_s": 0,
            **changes,
        }
    )


@contextmanager
def running(settings: Settings) -> Iterator[tuple[LocalHost, list[str]]]:
    """A local host delivering in a background thread, stopped (with all it started) on exit."""
    printed: list[str] = []
    host = LocalHost(settings, out=printed.append)
    host.start()
    worker = threading.Thread(target=host.run, kwargs={"interval_s": 0.25}, daemon=True)
    worker.start()
    try:
        yield host, printed
    finally:
        host.stop()
        worker.join(timeout=30)
        assert not worker.is_alive()


def wait_for_state(host: LocalHost, done: Callable[[RunRecord], bool], timeout_s: float) -> RunRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = list(host.services.runs.all())
        for record in records:
            if record.state in FAILED:
                pytest.fail(f"run {record.run_id} ended {record.state}: {record.reason}")
            if done(record):
                return record
        time.sleep(0.5)
    pytest.fail(f"no run reached the expected state within {timeout_s} s: {[(r.run_id, r.state) for r in records]}")


def wait_until(done: Callable[[], bool], timeout_s: float = 30) -> None:
    """The host prints and sends from its own thread: give it a moment."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the host")
        time.sleep(0.25)


def upload(host: LocalHost, name: str, content: bytes) -> None:
    settings = host.settings
    host.services.storage.blob(f"{settings.intake_prefix}{name}").upload_blob(content, overwrite=True)


def test_upload_to_live_endpoint_to_idle_sweep(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        serve(webhook_handler, Receiver(fail_first=1)) as receiver,
        running(
            local_settings(
                settings, idle_window_s=15, idle_notice_s=5, webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET
            )
        ) as (host, printed),
    ):
        settings = host.settings
        upload(host, "support-chat.jsonl", dataset(60))
        live = wait_for_state(host, lambda r: r.state is RunState.LIVE, LIVE_TIMEOUT_S)

        # Every step happened, in order, and is on the record.
        states = list(dict.fromkeys(RunState(entry["state"]) for entry in live.history))  # first time each
        assert [s for s in states if s in HAPPY_PATH] == HAPPY_PATH
        assert {"train_loss", "eval_loss"} <= set(live.metrics)
        assert live.metrics["train_loss"] > 0

        # The report sits beside the upload; the splits went where the job read them.
        container = host.services.storage.container
        report = orjson.loads(
            container.get_blob_client(f"{settings.reports_prefix}support-chat.jsonl.validation.json")
            .download_blob()
            .readall()
        )
        assert report["valid"] is True
        assert report["stats"]["examples"] == 60

        # Registered in MLflow's registry under the name and version the rollout chose.
        platform = host.services.platform
        model = platform.get_model(live.model_name, live.model_version)
        assert model is not None

        # The endpoint answers in the managed endpoint's scoring contract, and only with its key.
        endpoint = platform.get_endpoint(live.endpoint)
        assert endpoint is not None
        assert endpoint.traffic == {live.deployment: 100}
        body = {"input_data": {"input_string": [[{"role": "user", "content": "Hello?"}]], "parameters": {}}}
        assert httpx.post(endpoint.scoring_uri, json=body, timeout=60).status_code == 401
        key = platform.get_endpoint_key(live.endpoint)
        answer = httpx.post(endpoint.scoring_uri, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert answer.status_code == 200
        assert isinstance(answer.json()["output"], str)
        wait_until(lambda: any(endpoint.scoring_uri in line for line in printed))  # the host showed where to call it
        # ... and how: the printed curl and openai commands work as printed, reading the key from its file.
        for label in ("curl:", "openai:"):
            (command,) = [line.split(label, 1)[1].strip() for line in printed if line.strip().startswith(label)]
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            ran = subprocess.run(command, check=False, shell=True, capture_output=True, text=True, timeout=120, env=env)
            assert ran.returncode == 0, (command, ran.stdout[-2000:], ran.stderr[-2000:])
            assert label != "curl:" or "output" in orjson.loads(ran.stdout)
        assert live.scoring_uri == endpoint.scoring_uri
        row = StatusRow.of(live)  # what status --json shows
        assert (row.scoring_uri, row.model_id, row.model_version) == (endpoint.scoring_uri, model.id, model.version)

        # The key is fetched at call time only: never in the run record, the reports, the logs or the output.
        entity = host.services.storage.table.get_entity("run", live.run_id)
        assert key not in orjson.dumps(dict(entity), default=str).decode()
        for blob in container.list_blobs(name_starts_with=settings.reports_prefix):
            assert key.encode() not in container.get_blob_client(blob.name).download_blob().readall()
        assert key not in caplog.text
        assert not any(key in line for line in printed)

        # Nobody calls it for the idle window: the sweep deletes it and says so on the record.
        # Nobody calls it for the idle window: the sweep announces the deletion, then makes it and says so.
        retired = wait_for_state(host, lambda r: r.state is RunState.RETIRED, settings.idle_window_s + 120)
        price = settings.instance_prices[settings.inference_instance_type] * 24
        assert retired.history[-1]["note"] == (
            f"endpoint {live.endpoint} deleted: no requests in the last 15 s; saves ${price:,.2f} a day"
        )
        assert platform.get_endpoint(live.endpoint) is None
        with pytest.raises(httpx.TransportError):
            httpx.post(endpoint.scoring_uri, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=5)

        # Every event of the run reached the signed webhook (its first request failed), once each after
        # deduplication, and the host printed them from the local event log; none carries the key.
        wanted = {"submitted", "live", "idle_deletion_scheduled", "idle_deleted"}
        wait_until(
            lambda: {e["type"].removeprefix("ftpilot.run.") for e in by_id(receiver.requests).values()} >= wanted
        )
        assert receiver.refused == []
        received = by_id(receiver.requests)
        assert {e["data"]["run_id"] for e in received.values()} == {live.run_id}
        assert sorted(e["type"].removeprefix("ftpilot.run.") for e in received.values()) == sorted(wanted)
        assert not any(key in orjson.dumps(request["event"]).decode() for request in receiver.requests)
        wait_until(lambda: sum("event ftpilot.run." in line for line in printed) >= len(wanted))
        assert any(f"event ftpilot.run.live run {live.run_id[:8]}" in line for line in printed)


def test_a_host_restarted_mid_rollout_takes_the_run_to_live(settings: Settings) -> None:
    settings = local_settings(settings, idle_window_s=86400)
    with running(settings) as (host, _):
        upload(host, "restart-chat.jsonl", dataset(40, start=500))
        mid = wait_for_state(host, lambda r: r.state in (RunState.DEPLOYING, RunState.SMOKE_TESTING), LIVE_TIMEOUT_S)
    # The host is down mid-rollout (its processes stopped with it); a new one picks the run up.
    with running(settings) as (host, _):
        live = wait_for_state(host, lambda r: r.run_id == mid.run_id and r.state is RunState.LIVE, LIVE_TIMEOUT_S)
        endpoint = host.services.platform.get_endpoint(live.endpoint)
        assert endpoint is not None
        assert endpoint.traffic == {live.deployment: 100}
        deployments = host.services.platform.list_deployments(live.endpoint)
        assert [d.name for d in deployments] == [live.deployment]  # one live deployment, no orphans


def test_the_gate_keeps_a_worse_model_off_the_endpoint(settings: Settings) -> None:
    """Three models for one dataset: the first goes live, a better one replaces it, a worse one does not."""
    settings = local_settings(settings, idle_window_s=86400)
    blob_name = f"{settings.intake_prefix}gated-chat.jsonl"
    untrained = {"ftpilot_learning_rate": "0"}  # the stand-in's random weights, unchanged by training
    with running(settings) as (host, printed):
        storage, platform = host.services.storage, host.services.platform

        def roll_out(start: int, metadata: dict[str, str], ended: Callable[[RunRecord], bool]) -> RunRecord:
            before = {r.run_id for r in host.services.runs.all()}
            storage.blob(blob_name).upload_blob(dataset(60, start=start), overwrite=True, metadata=metadata)
            return wait_for_state(host, lambda r: r.run_id not in before and ended(r), LIVE_TIMEOUT_S)

        # The first model on the endpoint has no champion: it is promoted because it answers.
        first = roll_out(700, untrained, lambda r: r.state is RunState.LIVE)
        assert first.promotion["decision"] == "promoted" and "champion" not in first.promotion

        # A trained model against the untrained champion: better, so it takes the traffic.
        better = roll_out(800, {}, lambda r: r.state is RunState.LIVE)
        assert better.endpoint == first.endpoint, better
        assert better.promotion["champion"] == first.deployment and better.promotion["difference"] > 0
        assert host.services.runs.get(first.run_id).state is RunState.RETIRED

        # An untrained challenger against the trained champion: not promoted; the champion keeps serving.
        worse = roll_out(900, untrained, lambda r: r.state is RunState.NOT_PROMOTED)
        assert worse.promotion["champion"] == better.deployment
        assert worse.promotion["difference"] < -settings.gate_tolerance, worse.promotion
        assert worse.reason.startswith("not promoted: ")
        endpoint = platform.get_endpoint(better.endpoint)
        assert endpoint.traffic == {better.deployment: 100}
        assert [d.name for d in platform.list_deployments(better.endpoint)] == [better.deployment]
        key = {"Authorization": f"Bearer {platform.get_endpoint_key(better.endpoint)}"}
        body = {"input_data": {"input_string": [[{"role": "user", "content": "Hello?"}]], "parameters": {}}}
        for _ in range(5):  # every request is the champion's
            answer = httpx.post(endpoint.scoring_uri, json=body, headers=key, timeout=60)
            assert answer.status_code == 200 and answer.headers["azureml-model-deployment"] == better.deployment
        kept = platform.get_model(worse.model_name, worse.model_version)  # still registered, with the verdict
        assert kept.tags["ftpilot-gate"].startswith("not_promoted: ROUGE-L F")
        report = orjson.loads(storage.blob(worse.promotion["report"]).download_blob().readall())
        assert report["decision"] == "not_promoted" and len(report["samples"]) == worse.promotion["samples"] > 0
        assert any("promotion gate: not_promoted; evidence in" in line for line in printed)
