"""The local workspace end to end: real Azurite, real training and server processes, no mocks.

One tiny model is trained for the whole module (a few seconds of training, ~20 s with the
imports); the tests then run in file order on the workspace it leaves behind, the way the local
host uses it: register, one endpoint whose deployments come, take traffic, go, survive a restart,
and finally the endpoint's deletion. The module's teardown stops whatever is still running.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
from azure.storage.blob import ContainerClient

from shared.config import Settings
from shared.platform.local import LocalPlatform, base_model, tracking
from shared.platform.local.loopback import port_free
from shared.platform.local.outbox import drain_events
from shared.platform.local.processes import Proc, alive
from shared.platform.port import (
    ConflictError,
    DataRef,
    DeploymentRequest,
    EndpointInfo,
    EndpointRequest,
    FineTuneRequest,
    JobInfo,
    JobStatus,
    ModelInfo,
    ModelRequest,
    NotFoundError,
    PlatformError,
    ProvisioningState,
)
from shared.rollout import SMOKE_PARAMETERS
from shared.run_events import RUN_COMPLETED, RUN_STATUS_CHANGED, ignore_reason, parse
from tests.data import dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),  # MLflow's own store
]

T = TypeVar("T")
JOB, MISSING, CANCELED = "ftpilot-local-train", "ftpilot-local-missing", "ftpilot-local-cancel"
ENDPOINT = "ep-local"
# The stand-in model starts from random weights: the walkthrough's 5e-6 would teach it nothing.
TRAIN_PARAMETERS = {"num_train_epochs": 1, "learning_rate": 2e-3}
QUESTION = [{"role": "user", "content": "Tell me something about bees."}]
SMOKE = {"input_data": {"input_string": [QUESTION], "parameters": SMOKE_PARAMETERS}}
JOB_TIMEOUT_S = 300
SERVER_TIMEOUT_S = 120


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.25)


def terminal_job(platform: LocalPlatform, name: str) -> JobInfo:
    return wait_for(
        lambda: job if (job := platform.get_job(name)) and job.status.terminal else None, JOB_TIMEOUT_S, f"job {name}"
    )


def settled_deployment(platform: LocalPlatform, name: str) -> Any:
    return wait_for(
        lambda: d if (d := platform.get_deployment(ENDPOINT, name)) and d.state.terminal else None,
        SERVER_TIMEOUT_S,
        f"deployment {name}",
    )


def settled_endpoint(platform: LocalPlatform) -> EndpointInfo:
    return wait_for(
        lambda: e if (e := platform.get_endpoint(ENDPOINT)) and e.state.terminal else None,
        SERVER_TIMEOUT_S,
        f"endpoint {ENDPOINT}",
    )


def server_row(platform: LocalPlatform, deployment: str | None = None) -> tuple[Proc, int]:
    """The recorded process and port of the endpoint's router, or of one of its deployments."""
    with platform.endpoints.store.read() as db:
        if deployment is None:
            row = db.execute("SELECT * FROM endpoints WHERE name = ?", (ENDPOINT,)).fetchone()
        else:
            row = db.execute(
                "SELECT * FROM deployments WHERE endpoint = ? AND name = ?", (ENDPOINT, deployment)
            ).fetchone()
    return Proc(row["pid"], row["pid_started"]), row["port"]


@pytest.fixture(scope="module")
def local_settings(azurite, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    container = f"local-{uuid.uuid4().hex[:10]}"
    blobs = ContainerClient.from_connection_string(azurite.connection_string, container)
    blobs.create_container()
    blobs.upload_blob("prepared/train.jsonl", dataset(40))
    blobs.upload_blob("prepared/test.jsonl", dataset(8, start=100))
    return Settings(
        storage=azurite.connection_string,
        intake_container=container,
        data_dir=tmp_path_factory.mktemp("local") / "ftpilot",
        subscription_id="sub",
        resource_group="rg",
        workspace_name="ws",
    )


@pytest.fixture(scope="module")
def platform(local_settings: Settings) -> Iterator[LocalPlatform]:
    platform = LocalPlatform(local_settings)
    yield platform
    platform.shutdown()


def finetune(settings: Settings, name: str, train: str = "prepared/train.jsonl") -> FineTuneRequest:
    return FineTuneRequest(
        job_name=name,
        base_model="Phi-3-mini-4k-instruct",
        train=DataRef(settings.intake_container, train),
        test=DataRef(settings.intake_container, "prepared/test.jsonl"),
        dataset_label="chat",
        parameters=TRAIN_PARAMETERS,
        tags={"ftpilot-run": name},
    )


@pytest.fixture(scope="module")
def jobs(platform: LocalPlatform, local_settings: Settings) -> dict[str, Any]:
    """Three submissions at once: one trains, one waits behind it and fails on missing data, one is canceled."""
    started = time.monotonic()
    submitted = [
        platform.submit_finetune(finetune(local_settings, JOB)),
        platform.submit_finetune(finetune(local_settings, MISSING, train="prepared/missing.jsonl")),
        platform.submit_finetune(finetune(local_settings, CANCELED)),
    ]
    platform.begin_cancel_job(CANCELED)
    canceled = platform.get_job(CANCELED)
    trained = terminal_job(platform, JOB)
    print(f"\ntraining job: {time.monotonic() - started:.1f} s from submission to completed")
    return {"submitted": submitted, "canceled": canceled, JOB: trained, MISSING: terminal_job(platform, MISSING)}


@pytest.fixture(scope="module")
def events(jobs: dict[str, Any], local_settings: Settings) -> list[dict[str, Any]]:
    """Every event the jobs emitted, delivered once as the local host would (acknowledged)."""
    delivered = []
    for delivery in drain_events(local_settings.data_dir):
        delivered.extend(delivery.events)
        delivery.ack()
    return delivered


@pytest.fixture(scope="module")
def model(platform: LocalPlatform, jobs: dict[str, Any]) -> ModelInfo:
    return platform.register_model(
        ModelRequest("phi-3-mini-4k-instruct-chat", "r1", JOB, "fine-tuned locally", {"ftpilot-run": "r1"})
    )


@pytest.fixture(scope="module")
def endpoint(platform: LocalPlatform, model: ModelInfo) -> EndpointInfo:
    started = time.monotonic()
    platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "local test endpoint", {"managed-by": "ftpilot"}))
    platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "blue", model.id, "Standard_NC6s_v3"))
    assert platform.get_deployment(ENDPOINT, "blue").state is ProvisioningState.CREATING
    assert settled_endpoint(platform).state is ProvisioningState.SUCCEEDED
    assert settled_deployment(platform, "blue").state is ProvisioningState.SUCCEEDED
    print(f"\nendpoint and deployment: {time.monotonic() - started:.1f} s from begin_create to succeeded")
    return platform.get_endpoint(ENDPOINT)


def authorized(platform: LocalPlatform, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {platform.get_endpoint_key(ENDPOINT)}", **headers}


# --- Jobs ------------------------------------------------------------------------------------


def test_one_job_trains_at_a_time(jobs: dict[str, Any]) -> None:
    assert [job.status for job in jobs["submitted"]] == [JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.QUEUED]
    assert jobs["canceled"].status is JobStatus.CANCELED


def test_training_completes_with_losses_in_mlflow(platform: LocalPlatform, jobs: dict[str, Any]) -> None:
    job = jobs[JOB]
    assert job.status is JobStatus.COMPLETED and job.error is None
    assert job.parameters["learning_rate"] == 2e-3
    assert job.parameters["lr_scheduler_type"] == "cosine"  # the walkthrough's default, merged under the request's
    metrics = platform.get_job_metrics(JOB)
    assert {"train_loss", "eval_loss", "train_runtime"} <= set(metrics)

    mlflow = tracking.client(platform.layout)
    run = mlflow.get_run(platform.jobs.record(JOB).mlflow_run_id)
    assert run.data.params["learning_rate"] == "0.002" and run.data.params["num_train_epochs"] == "1"
    losses = mlflow.get_metric_history(run.info.run_id, "loss")
    assert [point.step for point in losses] == [10, 20, 30, 40]  # 40 examples, batch 1, logged every 10 steps
    assert metrics["eval_loss"] < losses[0].value  # it learned something about the held-out split
    assert list(platform.layout.artifacts.rglob("MLmodel"))  # the model is under data_dir, not ./mlruns


def test_missing_data_fails_with_a_readable_error(jobs: dict[str, Any], local_settings: Settings) -> None:
    failed = jobs[MISSING]
    assert failed.status is JobStatus.FAILED
    assert f"{local_settings.intake_container}/prepared/missing.jsonl does not exist" in failed.error.splitlines()[-1]


def test_jobs_emit_azures_run_events(events: list[dict[str, Any]], local_settings: Settings) -> None:
    parsed = [parse(event) for event in events]
    assert all(ignore_reason(event, local_settings.topic) == "" for event in parsed)
    by_job = {name: [(e.type, e.status) for e in parsed if e.run_id == name] for name in (JOB, MISSING, CANCELED)}
    assert by_job == {
        JOB: [(RUN_STATUS_CHANGED, "Running"), (RUN_STATUS_CHANGED, "Completed"), (RUN_COMPLETED, "Completed")],
        MISSING: [(RUN_STATUS_CHANGED, "Running"), (RUN_STATUS_CHANGED, "Failed")],
        CANCELED: [(RUN_STATUS_CHANGED, "Canceled")],
    }
    order = [(e.run_id, e.status) for e in parsed]
    assert order.index((MISSING, "Running")) > order.index((JOB, "Completed"))  # it waited for the machine
    assert all(e.tags == {"ftpilot-run": e.run_id} for e in parsed)


def test_submitting_again_returns_the_job(platform: LocalPlatform, local_settings: Settings, events: Any) -> None:
    again = platform.submit_finetune(finetune(local_settings, JOB))
    assert again.status is JobStatus.COMPLETED
    assert list(drain_events(local_settings.data_dir)) == []  # nothing started, nothing emitted


# --- Models ----------------------------------------------------------------------------------


def test_register_is_idempotent(platform: LocalPlatform, model: ModelInfo) -> None:
    request = ModelRequest("phi-3-mini-4k-instruct-chat", "r1", JOB, "fine-tuned locally", {"ftpilot-run": "r1"})
    assert platform.register_model(request) == model
    # The version is MLflow's number, so models:/<name>/<version> built from it is the model's id.
    assert model.version == "1" and model.id == f"models:/phi-3-mini-4k-instruct-chat/{model.version}"
    assert model.tags["ftpilot-run"] == "r1"
    assert platform.get_model(model.name, "1") == model
    assert platform.get_model(model.name, "2") is None
    with pytest.raises(ConflictError):
        platform.register_model(ModelRequest(model.name, "r1", MISSING, "another job's"))
    with pytest.raises(PlatformError, match="no trained model"):
        platform.register_model(ModelRequest(model.name, "r2", MISSING, "a failed job's"))


def test_a_configured_base_model_is_used_when_it_loads_offline(
    platform: LocalPlatform, jobs: dict[str, Any], tmp_path: Path
) -> None:
    (built,) = platform.layout.base_models.iterdir()  # the job's stand-in, a model folder like any other
    texts = ["some training text"]
    configured = base_model.resolve("Phi-3-mini-4k-instruct", str(built), texts, tmp_path)
    assert configured.path == str(built) and "FTPILOT_LOCAL_BASE_MODEL" in configured.source
    fallback = base_model.resolve("Llama-3-8B", "no-such-org/no-such-model", texts, tmp_path)
    assert Path(fallback.path).parent == tmp_path and Path(fallback.path).name.startswith("llama-")
    assert base_model.resolve("Llama-3-8B", None, texts, tmp_path) == fallback  # built once, then reused


# --- Endpoints -------------------------------------------------------------------------------


def test_endpoint_is_listed(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    (listed,) = platform.list_endpoints()
    assert listed.name == ENDPOINT and listed.tags == {"managed-by": "ftpilot"} and listed.created_at
    assert listed.scoring_uri == endpoint.scoring_uri and listed.scoring_uri.startswith("http://127.0.0.1:")
    assert [d.name for d in platform.list_deployments(ENDPOINT)] == ["blue"]


def test_score_answers_the_managed_endpoint_contract(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    answer = platform.invoke(ENDPOINT, "blue", SMOKE, timeout_s=60)
    assert isinstance(answer["output"], str) and answer["output"].strip()
    two = {"input_data": {"input_string": [QUESTION, QUESTION], "parameters": {"max_new_tokens": 20}}}
    outputs = platform.invoke(ENDPOINT, "blue", two, timeout_s=60)["output"]
    assert isinstance(outputs, list) and len(outputs) == 2 and all(isinstance(o, str) for o in outputs)


def test_the_endpoint_key_is_required(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    pinned = {"azureml-model-deployment": "blue"}
    assert httpx.post(endpoint.scoring_uri, json=SMOKE, headers=pinned, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key", **pinned}
    assert httpx.post(endpoint.scoring_uri, json=SMOKE, headers=wrong, timeout=60).status_code == 401
    assert httpx.post(endpoint.scoring_uri, json=SMOKE, headers=authorized(platform, **pinned), timeout=60).is_success
    with pytest.raises(PlatformError, match="HTTP 404"):
        platform.invoke(ENDPOINT, "no-such-deployment", SMOKE, timeout_s=60)


def test_openai_chat_completions(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    response = httpx.post(
        endpoint.scoring_uri.removesuffix("/score") + "/v1/chat/completions",
        json={"messages": QUESTION, "temperature": 0, "max_tokens": 20},
        headers=authorized(platform, **{"azureml-model-deployment": "blue"}),
        timeout=60,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] <= 20


def test_no_port_answers_without_the_key(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    """The router wants the endpoint key; a deployment's own port wants a secret only the router has."""
    _, router_port = server_row(platform)
    _, deployment_port = server_row(platform, "blue")
    key = {"Authorization": f"Bearer {platform.get_endpoint_key(ENDPOINT)}"}
    for port, tried in ((router_port, {}), (deployment_port, {}), (deployment_port, key)):
        for path in ("/score", "/v1/chat/completions"):
            answer = httpx.post(f"http://127.0.0.1:{port}{path}", json=SMOKE, headers=tried, timeout=60)
            assert answer.status_code == 401, (port, path, tried)
    assert httpx.get(f"http://127.0.0.1:{deployment_port}/health", timeout=10).status_code == 401
    layout = platform.layout
    assert stat.S_IMODE(layout.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(layout.state_db.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.keys.stat().st_mode) == 0o700


def test_the_openai_sdk_talks_to_the_endpoint(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    import openai

    sdk = openai.OpenAI(
        base_url=endpoint.scoring_uri.removesuffix("/score") + "/v1",
        api_key=platform.get_endpoint_key(ENDPOINT),
        default_headers={"azureml-model-deployment": "blue"},  # no traffic is set yet
        max_retries=0,
    )
    completion = sdk.chat.completions.create(model="any", messages=QUESTION, max_tokens=10)
    assert completion.choices[0].message.role == "assistant"
    streamed = sdk.chat.completions.create(model="any", messages=QUESTION, max_tokens=10, stream=True)
    assert [chunk.object for chunk in streamed][-1] == "chat.completion.chunk"


def test_mlflow_serves_the_registered_model_as_chat(platform: LocalPlatform, model: ModelInfo, tmp_path: Path) -> None:
    """``mlflow models serve`` on the registered version takes OpenAI-style messages (the chat task's signature)."""
    from shared.platform.local.loopback import free_port
    from shared.platform.local.processes import child_env, stop

    port = free_port()
    env = {**child_env(platform.settings), "MLFLOW_TRACKING_URI": tracking.tracking_uri(platform.layout)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # it runs the venv's uvicorn
    log = tmp_path / "mlflow-serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                model.id,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={"messages": QUESTION, "max_tokens": 10}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        (completion,) = answer.json()
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["role"] == "assistant"
    finally:
        stop(Proc(server.pid, psutil.Process(server.pid).create_time()) if server.poll() is None else None)
        server.wait(10)


def test_a_model_that_does_not_load_fails_the_deployment(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "broken", "models:/no-such-model/1", "cpu"))
    failed = settled_deployment(platform, "broken")
    assert failed.state is ProvisioningState.FAILED
    assert "no-such-model" in failed.error
    platform.begin_delete_deployment(ENDPOINT, "broken")
    assert platform.get_deployment(ENDPOINT, "broken") is None


def test_traffic_follows_the_weights_and_the_header(
    platform: LocalPlatform, endpoint: EndpointInfo, model: ModelInfo
) -> None:
    platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "green", model.id, "cpu"))
    assert settled_deployment(platform, "green").state is ProvisioningState.SUCCEEDED
    counted_before = platform.endpoint_requests(ENDPOINT, 300).within(300)

    def answered_by(count: int, **headers: str) -> Counter[str]:
        body = {"input_data": {"input_string": [QUESTION], "parameters": {"max_new_tokens": 5}}}
        answers = [
            httpx.post(endpoint.scoring_uri, json=body, headers=authorized(platform, **headers), timeout=60)
            for _ in range(count)
        ]
        assert all(answer.status_code == 200 for answer in answers)
        return Counter(answer.headers["azureml-model-deployment"] for answer in answers)

    platform.begin_set_traffic(ENDPOINT, {"blue": 70, "green": 30})
    assert platform.get_endpoint(ENDPOINT).traffic == {"blue": 70, "green": 30}
    assert answered_by(10) == {"blue": 7, "green": 3}
    assert answered_by(4, **{"azureml-model-deployment": "green"}) == {"green": 4}
    platform.begin_set_traffic(ENDPOINT, {"blue": 100})
    assert answered_by(3) == {"blue": 3}
    with pytest.raises(ConflictError, match="still takes 100%"):  # as on Azure: move the traffic first
        platform.begin_delete_deployment(ENDPOINT, "blue")
    with pytest.raises(ConflictError, match="already serves model"):
        platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "blue", "models:/another/1", "cpu"))
    assert platform.endpoint_requests(ENDPOINT, 300).within(300) == counted_before + 17
    with pytest.raises(PlatformError, match="adds up to 90"):
        platform.begin_set_traffic(ENDPOINT, {"blue": 60, "green": 30})
    with pytest.raises(NotFoundError):
        platform.begin_set_traffic(ENDPOINT, {"purple": 100})


def test_deleting_a_deployment_stops_it_and_frees_its_port(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    proc, port = server_row(platform, "green")
    platform.begin_delete_deployment(ENDPOINT, "green")
    assert not alive(proc) and port_free(port)
    assert [d.name for d in platform.list_deployments(ENDPOINT)] == ["blue"]
    assert platform.get_endpoint(ENDPOINT).traffic == {"blue": 100}
    platform.begin_delete_deployment(ENDPOINT, "green")  # absent: nothing to do


def test_a_restart_brings_the_endpoint_back(
    platform: LocalPlatform, endpoint: EndpointInfo, local_settings: Settings
) -> None:
    key = platform.get_endpoint_key(ENDPOINT)
    processes = [server_row(platform)[0], server_row(platform, "blue")[0]]
    platform.shutdown()
    assert not any(alive(proc) for proc in processes)
    with pytest.raises(PlatformError):
        platform.invoke(ENDPOINT, "blue", SMOKE, timeout_s=10)

    started = time.monotonic()
    restarted = LocalPlatform(local_settings)
    restarted.recover()
    assert settled_endpoint(restarted).state is ProvisioningState.SUCCEEDED
    assert settled_deployment(restarted, "blue").state is ProvisioningState.SUCCEEDED
    print(f"\nrecover(): {time.monotonic() - started:.1f} s until the endpoint answered again")
    assert restarted.get_endpoint_key(ENDPOINT) == key
    assert restarted.get_endpoint(ENDPOINT).scoring_uri == endpoint.scoring_uri  # its port was still free
    assert restarted.get_endpoint(ENDPOINT).traffic == {"blue": 100}
    assert restarted.invoke(ENDPOINT, "blue", SMOKE, timeout_s=60)["output"].strip()


def test_deleting_the_endpoint_stops_everything(platform: LocalPlatform, endpoint: EndpointInfo) -> None:
    servers = [server_row(platform), server_row(platform, "blue")]
    platform.begin_delete_endpoint(ENDPOINT)
    assert not any(alive(proc) for proc, _ in servers)
    assert all(port_free(port) for _, port in servers)
    assert platform.get_endpoint(ENDPOINT) is None and platform.list_endpoints() == []
    with pytest.raises(NotFoundError):
        platform.get_endpoint_key(ENDPOINT)
    assert not Path(platform.layout.keys / f"{ENDPOINT}.key").exists()
    platform.begin_delete_endpoint(ENDPOINT)  # absent: nothing to do


# --- Job life cycle --------------------------------------------------------------------------


def job_events(settings: Settings, name: str) -> list[str]:
    statuses = []
    for delivery in drain_events(settings.data_dir):
        statuses += [parse(event).status for event in delivery.events if parse(event).run_id == name]
        delivery.ack()
    return statuses


def test_shutdown_requeues_the_running_job_and_a_dead_trainer_fails_it(
    platform: LocalPlatform, local_settings: Settings, jobs: dict[str, Any]
) -> None:
    name = "ftpilot-local-requeue"
    assert platform.submit_finetune(finetune(local_settings, name)).status is JobStatus.RUNNING
    first = platform.jobs.record(name).proc
    platform.shutdown()
    assert not alive(first)
    assert platform.jobs.record(name).status is JobStatus.QUEUED  # stopped on purpose: it starts over

    platform.recover()
    again = platform.jobs.record(name)
    assert again.status is JobStatus.RUNNING and again.proc != first
    os.kill(again.proc.pid, signal.SIGKILL)  # what an out-of-memory kill looks like
    failed = terminal_job(platform, name)
    assert failed.status is JobStatus.FAILED
    assert f"(pid {again.proc.pid}) ended without reporting a result" in failed.error
    assert job_events(local_settings, name) == ["Running", "Running", "Failed"]


def test_canceling_a_running_job_stops_its_trainer(platform: LocalPlatform, local_settings: Settings) -> None:
    name = "ftpilot-local-cancel-running"
    assert platform.submit_finetune(finetune(local_settings, name)).status is JobStatus.RUNNING
    proc = platform.jobs.record(name).proc
    platform.begin_cancel_job(name)
    assert platform.get_job(name).status is JobStatus.CANCELED
    assert not alive(proc)
    assert job_events(local_settings, name) == ["Running", "Canceled"]
