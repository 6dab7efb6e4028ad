"""The whole Azure flow once: upload to idle deletion, over Azurite and the workspace emulator.

Everything but Azure ML is real: the blob, queue and table of Azurite, the function entry points,
the real azure-ai-ml and azure-mgmt-monitor clients with their own transport, the scoring call over
loopback HTTP with the key from ``listKeys``. Two uploads of one dataset roll out onto one endpoint
(the second replaces the first), then the idle sweep deletes the endpoint. The test asserts what
the service received, in order, and counts the ARM calls of each phase against ``docs/arm-calls.md``:
ARM throttles per subscription, so that number decides how many rollouts can run at once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from functions.cleanup import cleanup
from functions.rollout import rollout, rollout_poison, run_events
from shared.host.queues import deliver
from shared.intake import handle_upload
from shared.runs import RunRecord, RunState, use_clock
from shared.services import Services, use_services
from tests.azure_wire.transport import Sent
from tests.azure_wire.workspace import Wire, wire_settings
from tests.data import dataset
from tests.events import delivered, run_event
from tests.paths import REPO

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

DATASET = "incoming/support-chat.jsonl"
DOC = REPO / "docs" / "arm-calls.md"
_AZURE_SETTINGS = (
    "platform",
    "subscription_id",
    "resource_group",
    "workspace_name",
    "datastore",
    "compute_cluster",
    "base_model",
    "experiment_name",
    "inference_instance_type",
)


@pytest.fixture
def azure(settings, storage) -> Iterator[tuple[Wire, Services]]:
    """Services on Azurite with the Azure ML adapter over the emulator, installed process-wide."""
    wire = Wire.start()
    azure_values = wire_settings().model_dump()
    chosen = settings.model_copy(
        update={**{key: azure_values[key] for key in _AZURE_SETTINGS}, "cleanup_grace_s": 0, "idle_window_s": 3600}
    )
    services = Services(chosen, storage, wire.platform(chosen))
    use_services(services)
    yield wire, services
    use_services(None)
    wire.close()


def upload(services: Services, start: int) -> RunRecord:
    client = services.storage.blob(DATASET)
    client.upload_blob(dataset(20, start=start), overwrite=True)
    outcome = handle_upload(client, services)
    assert outcome.action == "submitted", outcome
    return services.runs.get(outcome.run_id)


def drive(wire: Wire, services: Services, run_id: str, until: RunState, rounds: int = 40) -> RunRecord:
    """Run the rollout worker as the host would, one message at a time so the ARM counts do not depend on
    thread timing; time passes (one operation step) after each delivery."""
    storage = services.storage
    for _ in range(rounds):
        handled = deliver(storage.queue, rollout, poison=storage.poison_queue, visibility_timeout=1, workers=1)
        handled += deliver(storage.poison_queue, rollout_poison, visibility_timeout=1, workers=1)
        record = services.runs.get(run_id)
        if record.state is until and not handled:
            return record
        if handled:
            wire.emulator.tick()
    raise AssertionError(f"run {run_id} did not reach {until}: {services.runs.get(run_id)}")


def writes(sent: list[Sent]) -> list[str]:
    """ftpilot's own ARM writes and deletes, in order, as ``METHOD last/two/segments``."""
    return [f"{s.method} {'/'.join(s.path.split('/')[-2:])}" for s in sent if s.arm_kind in ("write", "delete")]


def _read_route(sent: Sent) -> str:
    """A read's route inside the workspace, names left out: ``onlineEndpoints/*/deployments``."""
    inside = sent.path.split("/workspaces/", 1)[-1].split("/", 1)
    if len(inside) == 1:
        return "workspace"
    return re.sub(r"(onlineEndpoints|deployments|models|versions|jobs|computes)/[^/]+", r"\1/*", inside[1])


def arm(sent: list[Sent]) -> Counter[str]:
    return Counter(kind for s in sent if (kind := s.arm_kind))


def documented() -> dict[str, dict[str, int]]:
    """The table in docs/arm-calls.md: phase -> reads, writes, deletes."""
    rows = re.findall(r"^\| (.+?) \| (\d+) \| (\d+) \| (\d+) \|$", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    return {phase: {"read": int(r), "write": int(w), "delete": int(d)} for phase, r, w, d in rows}


def test_upload_to_idle_deletion_over_the_wire(azure, capsys: pytest.CaptureFixture[str]) -> None:
    wire, services = azure
    emulator, recorder = wire.emulator, wire.recorder
    settings = services.settings
    counts: dict[str, Counter[str]] = {}

    # Intake: validate, split, check compute, submit the walkthrough's pipeline.
    mark = recorder.mark()
    first = upload(services, start=0)
    counts["intake (submit one job)"] = arm(recorder.since(mark))
    (put,) = [s for s in recorder.since(mark) if s.method == "PUT"]
    job = put.body["properties"]
    node = job["jobs"]["chat_completion_pipeline"]
    inputs = node["inputs"]
    assert put.path.endswith(f"/jobs/{first.job_name}")
    assert node["componentId"] == "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82"
    assert {
        inputs[k]["value"]
        for k in ("compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation")
    } == {settings.compute_cluster}
    assert inputs["number_of_gpu_to_use_finetuning"]["value"] == "1"  # from vmSizes: the A100 size has 1 GPU
    for split, path in (("train_file_path", first.train_path), ("test_file_path", first.test_path)):
        assert inputs[split]["job_input_type"] == "uri_file"
        assert inputs[split]["uri"] == f"azureml://datastores/{settings.datastore}/paths/{path}"
    assert job["settings"]["force_rerun"] is True
    assert job["settings"]["continue_on_step_failure"] is False
    assert job["experimentName"] == settings.experiment_name
    assert job["tags"]["managed-by"] == "ftpilot"

    # Training runs; the completion event arrives shaped like Azure's own.
    emulator.set_job_status(first.job_name, "Running")
    run_events(delivered(run_event(settings.topic, first.job_name, "Running", event_id="e-run")))
    emulator.set_job_status(first.job_name, "Completed")
    run_events(delivered(run_event(settings.topic, first.job_name, "Completed", event_id="e-done")))

    mark = recorder.mark()
    live = drive(wire, services, first.run_id, RunState.LIVE)
    rollout_one = recorder.since(mark)
    counts["rollout (new endpoint)"] = arm(rollout_one)
    assert (live.model_version, live.metrics) == ("1", {"train_loss": 0.91, "eval_loss": 1.07})
    assert writes(rollout_one) == [
        f"PUT versions/{live.model_version}",
        f"PUT onlineEndpoints/{live.endpoint}",
        f"PUT deployments/{live.deployment}",
        f"POST {live.endpoint}/listKeys",  # the smoke test
        f"POST {live.endpoint}/listKeys",  # the promotion gate: one key for all its calls
        f"PUT onlineEndpoints/{live.endpoint}",  # traffic to the new deployment
    ]
    (model_put,) = [s for s in rollout_one if s.method == "PUT" and "/models/" in s.path]
    assert model_put.body["properties"]["modelUri"] == f"azureml://jobs/{first.job_name}/outputs/trained_model"
    assert model_put.body["properties"]["tags"]["ftpilot-run"] == first.run_id
    endpoint_puts = [
        s for s in rollout_one if s.method == "PUT" and s.path.endswith(f"/onlineEndpoints/{live.endpoint}")
    ]
    assert endpoint_puts[0].body["properties"]["authMode"] == "Key"
    assert endpoint_puts[-1].body["properties"]["traffic"] == {live.deployment: 100}
    (deployment_put,) = [s for s in rollout_one if s.method == "PUT" and "/deployments/" in s.path]
    assert deployment_put.body["properties"]["model"].endswith(f"/models/{live.model_name}/versions/1")
    assert deployment_put.body["properties"]["livenessProbe"]["initialDelay"] == "PT10M"
    assert deployment_put.body["properties"]["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert deployment_put.body["sku"]["capacity"] == settings.inference_instance_count
    # The smoke test, then the gate's questions (a first model: no champion to ask), with the listKeys key.
    assert live.promotion["decision"] == "promoted" and live.promotion["samples"] > 0
    assert len(emulator.score_requests[live.endpoint]) == 1 + live.promotion["samples"] == live.probe_requests

    # A new upload of the same dataset replaces the model on the same endpoint.
    second = upload(services, start=100)
    emulator.set_job_status(second.job_name, "Completed")
    run_events(delivered(run_event(settings.topic, second.job_name, "Completed", event_id="e-done-2")))
    mark = recorder.mark()
    replaced = drive(wire, services, second.run_id, RunState.LIVE)
    rollout_two = recorder.since(mark)
    counts["rollout (replace a live deployment)"] = arm(rollout_two)
    assert (replaced.endpoint, replaced.model_version) == (live.endpoint, "2")
    assert writes(rollout_two) == [
        "PUT versions/2",
        f"PUT deployments/{replaced.deployment}",
        f"POST {live.endpoint}/listKeys",
        f"POST {live.endpoint}/listKeys",
        f"PUT onlineEndpoints/{live.endpoint}",
        f"DELETE deployments/{live.deployment}",  # the replaced one, once the traffic moved
    ]
    assert replaced.promotion["champion"] == live.deployment  # both were asked the same questions
    asked = 1 + 2 * replaced.promotion["samples"]
    assert (
        len(emulator.score_requests[live.endpoint])
        == live.probe_requests + asked
        == replaced.probe_requests + live.probe_requests
    )
    emulator.settle()
    assert [name for (ep, name) in emulator.deployments if ep == live.endpoint] == [replaced.deployment]
    assert services.runs.get(first.run_id).state is RunState.RETIRED

    # A day later nobody has called it: the idle sweep reads Azure Monitor and deletes the endpoint.
    emulator.score_requests[live.endpoint] = [t - timedelta(days=2) for t in emulator.score_requests[live.endpoint]]
    mark = recorder.mark()
    use_clock(lambda: datetime.now(UTC) + timedelta(days=2))  # the run has been live for a whole window
    try:
        cleanup(None)
    finally:
        use_clock(None)
    sweep = recorder.since(mark)
    counts["idle sweep (one endpoint, deleted)"] = arm(sweep)
    (metrics,) = [s for s in sweep if s.path.endswith("/providers/Microsoft.Insights/metrics")]
    assert f"/onlineEndpoints/{live.endpoint}/" in metrics.path
    assert "metricnames=RequestsPerMinute" in metrics.url and "aggregation=Average" in metrics.url
    assert writes(sweep) == [f"DELETE onlineEndpoints/{live.endpoint}"]
    emulator.settle()
    assert emulator.endpoints == {} and emulator.deployments == {}
    assert services.runs.get(second.run_id).state is RunState.RETIRED

    table = {
        phase: {kind: count.get(kind, 0) for kind in ("read", "write", "delete")} for phase, count in counts.items()
    }
    reads = Counter(_read_route(s) for s in rollout_one if s.arm_kind == "read")
    with capsys.disabled():
        print("\nARM calls ftpilot makes (LRO polls left out):")
        for phase, row in table.items():
            print(f"  {phase}: {row['read']} reads, {row['write']} writes, {row['delete']} deletes")
        print("  reads of the first rollout: " + ", ".join(f"{route} x{n}" for route, n in reads.most_common()))
    assert table == documented(), f"docs/arm-calls.md is out of date: measured {table}"


def test_a_base_model_missing_from_the_registry_stops_intake_with_the_setting_to_fix(azure) -> None:
    """The SDK raises ValidationException (an empty version list) or a 404: neither is worth a retry."""
    wire, services = azure
    wire.emulator.registry_models.clear()
    client = services.storage.blob(DATASET)
    client.upload_blob(dataset(20), overwrite=True)
    outcome = handle_upload(client, services)

    assert outcome.action == "submit_failed"
    record = services.runs.get(outcome.run_id)
    assert record.state is RunState.SUBMIT_FAILED
    assert "FTPILOT_BASE_MODEL" in record.reason and "Traceback" not in record.reason
    assert not [s for s in wire.recorder.calls() if s.method == "PUT"]
