"""The Azure ML adapter with the real azure-ai-ml and azure-mgmt-monitor clients, over the workspace emulator.

Every call below goes through the SDKs' own request builders, pipelines, pollers and deserialisers
to ``tests/azure_wire/emulator.py``; what the service received is read back from the emulator.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import Settings
from shared.platform.azureml import AzureMLPlatform
from shared.platform.azureml.endpoints import same_model
from shared.platform.azureml.metrics import MlflowRestMetricsReader
from shared.platform.azureml.submit import job_status
from shared.platform.port import (
    ConflictError,
    DataRef,
    DeploymentRequest,
    EndpointRequest,
    FineTuneRequest,
    JobStatus,
    MLPlatform,
    ModelRequest,
    NotFoundError,
    PlatformConfigError,
    PlatformError,
    ProvisioningState,
)
from tests.azure_wire.emulator import (
    BASE_MODEL,
    CLUSTER,
    CLUSTER_SIZE,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    Fault,
)
from tests.azure_wire.workspace import Wire, wire_settings
from tests.paths import REPO
from tests.promptly import promptly

# azure-ai-ml's marshmallow-3 schemas warn about marshmallow 4 on every load: the SDK's to fix, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

ENDPOINT = "ftpilot-chat"
MODEL_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.MachineLearningServices/"
    f"workspaces/{WORKSPACE}/models/ftpilot-chat/versions/1"
)


def make_settings(**overrides: object) -> Settings:
    return wire_settings(**overrides)


class Azure:
    """The adapter on real clients over one emulated workspace, with the emulator at hand."""

    def __init__(self, settings: Settings | None = None, model_tags: dict[str, str] | None = None) -> None:
        self.wire = Wire.start()
        self.emulator = self.wire.emulator
        if model_tags:
            self.emulator.set_base_model_tags(model_tags)
        self.platform = self.wire.platform(settings)

    def sent(self, method: str, fragment: str) -> list[Any]:
        """What the service received: the requests whose path contains ``fragment``."""
        return [s for s in self.wire.recorder.calls() if s.method == method and fragment in s.path]

    def sent_inputs(self, job_name: str) -> dict[str, str]:
        """The pipeline node's inputs as the service received them (literal values and asset URIs)."""
        node = self.emulator.jobs[job_name]["properties"]["jobs"]["chat_completion_pipeline"]
        return {name: spec.get("value", spec.get("uri")) for name, spec in node["inputs"].items()}

    def with_model(self, job_name: str = "ftpilot-d1-a1b2c3") -> str:
        """A completed job and its registered model; the model's id."""
        self.platform.submit_finetune(request(job_name))
        self.emulator.set_job_status(job_name, "Completed")
        return self.platform.register_model(model_request(job_name)).id

    def endpoint(self) -> None:
        self.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
        self.emulator.settle()

    def deployed(self) -> str:
        """A completed job's model serving on ``ENDPOINT`` as ``blue-v3``, provisioned; the model's id."""
        model_id = self.with_model()
        self.endpoint()
        self.platform.begin_create_deployment(deployment_request(model_id=model_id))
        self.emulator.settle()
        return model_id


@pytest.fixture
def azure() -> Iterator[Azure]:
    azure = Azure()
    yield azure
    azure.wire.close()


def request(job_name: str = "ftpilot-d1-a1b2c3", **overrides: object) -> FineTuneRequest:
    values: dict[str, object] = {
        "job_name": job_name,
        "base_model": BASE_MODEL,
        "train": DataRef("datasets", "prepared/d1/train.jsonl"),
        "test": DataRef("datasets", "prepared/d1/test.jsonl"),
        "dataset_label": "support-chats",
        "tags": {"dataset": "d1"},
    }
    values.update(overrides)
    return FineTuneRequest(**values)  # type: ignore[arg-type]


# Construction


def test_importing_the_adapter_leaves_the_azure_ml_sdk_unimported() -> None:
    probe = "import sys, shared.platform.azureml; print('azure.ai.ml' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_adapter_is_the_port(azure: Azure) -> None:
    assert isinstance(azure.platform, MLPlatform)


def test_missing_workspace_settings_are_named() -> None:
    platform = AzureMLPlatform(make_settings(subscription_id=None, workspace_name=None))
    with pytest.raises(PlatformConfigError, match="set FTPILOT_SUBSCRIPTION_ID, FTPILOT_WORKSPACE_NAME"):
        platform.get_job("any")


# Submission


def test_submission_builds_the_walkthrough_pipeline(azure: Azure) -> None:
    info = azure.platform.submit_finetune(request())

    (put,) = azure.sent("PUT", "/jobs/")
    assert put.path.endswith("/jobs/ftpilot-d1-a1b2c3")
    job = put.body["properties"]
    assert job["jobType"] == "Pipeline"
    assert job["displayName"] == "Phi-3-mini-4k-instruct-support-chats-1bs-cosine-ds2-lora--1savelimit--1seqlen"
    assert job["tags"] == {"dataset": "d1", "managed-by": "ftpilot"}
    assert job["experimentName"] == "ftpilot-chat-completion"
    assert job["settings"]["force_rerun"] is True
    assert job["settings"]["continue_on_step_failure"] is False
    node = job["jobs"]["chat_completion_pipeline"]
    assert node["componentId"].startswith("azureml://registries/azureml/components/chat_completion_pipeline/")
    assert "trained_model" in job["outputs"]
    assert node["inputs"]["train_file_path"]["job_input_type"] == "uri_file"
    latest = [s for s in azure.wire.recorder.calls() if "/versions" in s.path and "registries/azureml" in s.path]
    assert all("createdtime desc" in s.url.replace("%20", " ") for s in latest if s.path.endswith("/versions"))
    assert azure.sent_inputs("ftpilot-d1-a1b2c3") == {
        "mlflow_model_path": f"azureml://registries/azureml/models/{BASE_MODEL}/versions/15",
        "compute_model_import": CLUSTER,
        "compute_preprocess": CLUSTER,
        "compute_finetune": CLUSTER,
        "compute_model_evaluation": CLUSTER,
        "train_file_path": "azureml://datastores/ftpilot_datasets/paths/prepared/d1/train.jsonl",
        "test_file_path": "azureml://datastores/ftpilot_datasets/paths/prepared/d1/test.jsonl",
        "number_of_gpu_to_use_finetuning": "1",
        "num_train_epochs": "3",
        "per_device_train_batch_size": "1",
        "per_device_eval_batch_size": "1",
        "learning_rate": "5e-06",
        "lr_scheduler_type": "cosine",
        "apply_lora": "true",
        "apply_deepspeed": "true",
        "deepspeed_stage": "2",
    }
    assert info.name == "ftpilot-d1-a1b2c3"
    assert info.status is JobStatus.QUEUED
    assert info.display_name == job["displayName"]
    assert info.parameters["learning_rate"] == 5e-6
    assert info.studio_url and info.studio_url.startswith("https://ml.azure.com/runs/ftpilot-d1-a1b2c3")


def test_resubmission_returns_the_existing_job_without_submitting(azure: Azure) -> None:
    first = azure.platform.submit_finetune(request())
    azure.emulator.set_job_status(first.name, "Running")
    again = azure.platform.submit_finetune(request())

    assert len(azure.sent("PUT", "/jobs/")) == 1
    assert len(azure.sent("GET", "/computes/")) == 1
    assert (again.name, again.status) == (first.name, JobStatus.RUNNING)


def test_two_submissions_racing_past_the_look_end_with_one_job(azure: Azure) -> None:
    """The loser of a race looked before the winner's PUT landed; its own PUT is then an update (200)."""
    first = azure.platform.submit_finetune(request())
    azure.emulator.set_job_status(first.name, "Running")
    azure.emulator.inject(Fault("GET", f"/jobs/{first.name}", status=404, code="UserError"))  # the stale look
    second = azure.platform.submit_finetune(request())

    assert [put.path.rsplit("/", 1)[-1] for put in azure.sent("PUT", "/jobs/")] == [first.name] * 2
    assert list(azure.emulator.jobs) == [first.name]
    assert (second.name, second.status) == (first.name, JobStatus.RUNNING)


def test_the_request_base_model_is_looked_up_in_the_registry(azure: Azure) -> None:
    with pytest.raises(PlatformConfigError, match=r"model 'Llama-9' is not in registry 'azureml'.*FTPILOT_BASE_MODEL"):
        azure.platform.submit_finetune(request(base_model="Llama-9"))
    assert azure.emulator.jobs == {}


def test_a_registry_model_whose_version_list_is_a_404_is_a_config_error(azure: Azure) -> None:
    azure.emulator.registry_model_listing_404 = True
    with pytest.raises(PlatformConfigError, match="FTPILOT_BASE_MODEL"):
        azure.platform.submit_finetune(request())


def test_a_registry_without_the_pipeline_component_is_a_config_error(azure: Azure) -> None:
    azure.emulator.component_available = False  # an empty version list: the SDK's ValidationException
    with pytest.raises(PlatformConfigError, match="component 'chat_completion_pipeline' is not in registry 'azureml'"):
        azure.platform.submit_finetune(request())
    assert azure.emulator.jobs == {}


def test_data_outside_the_datastore_container_is_refused(azure: Azure) -> None:
    with pytest.raises(PlatformConfigError, match=r"not in the intake container 'datasets'.*FTPILOT_DATASTORE"):
        azure.platform.submit_finetune(request(train=DataRef("elsewhere", "train.jsonl")))
    with pytest.raises(PlatformConfigError, match="which the pipeline rejects"):
        azure.platform.submit_finetune(request(test=DataRef("datasets", "prepared/o'brien/test.jsonl")))


# Compute check


def with_cluster(azure: Azure, size: str, state: str = "Succeeded") -> Azure:
    azure.emulator.clusters[CLUSTER] = {"vmSize": size, "state": state}
    return azure


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        (
            lambda azure: azure.emulator.clusters.clear(),
            [f"compute cluster '{CLUSTER}' does not exist in workspace '{WORKSPACE}'", "FTPILOT_COMPUTE_CLUSTER"],
        ),
        (
            lambda azure: with_cluster(azure, CLUSTER_SIZE, "Failed"),
            [f"compute cluster '{CLUSTER}' is in provisioning state Failed", "FTPILOT_COMPUTE_CLUSTER"],
        ),
        (
            lambda azure: with_cluster(azure, "Standard_NC6"),
            ["VM size Standard_NC6 (K80 GPUs), which fine-tuning does not support", "FTPILOT_COMPUTE_CLUSTER"],
        ),
        (
            lambda azure: with_cluster(azure, "Standard_NC4as_T4_v3"),
            ["VM size Standard_NC4as_T4_v3", "not among the workspace region's VM sizes", "Standard_ND96asr_v4"],
        ),
        (
            lambda azure: with_cluster(azure, "Standard_DS3_v2"),
            ["VM size Standard_DS3_v2, which has no GPU", "FTPILOT_COMPUTE_CLUSTER"],
        ),
    ],
    ids=["missing", "failed", "k80", "unknown-size", "no-gpu"],
)
def test_compute_problems_name_what_to_fix(azure: Azure, setup, fragments) -> None:
    setup(azure)
    with pytest.raises(PlatformConfigError) as caught:
        azure.platform.submit_finetune(request())
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert azure.emulator.jobs == {}


def test_the_model_allow_list_decides_the_size_case_insensitively() -> None:
    allow = "['standard_nd96asr_v4', 'Standard_ND96amsr_A100_v4']"
    refused = Azure(model_tags={"finetune_compute_allow_list": allow})
    with pytest.raises(PlatformConfigError) as caught:
        refused.platform.submit_finetune(request())
    assert f"VM size {CLUSTER_SIZE}, which the base model does not allow" in str(caught.value)
    assert "allowed sizes: standard_nd96asr_v4, Standard_ND96amsr_A100_v4" in str(caught.value)

    allowed = with_cluster(Azure(model_tags={"finetune_compute_allow_list": allow}), "Standard_ND96asr_v4")
    info = allowed.platform.submit_finetune(request())
    assert allowed.sent_inputs(info.name)["number_of_gpu_to_use_finetuning"] == "8"
    assert "-8bs-" in (info.display_name or "")


def test_an_allow_list_overrides_the_unsupported_sizes() -> None:
    azure = with_cluster(Azure(model_tags={"finetune_compute_allow_list": "['Standard_NC6']"}), "Standard_NC6")
    assert azure.platform.submit_finetune(request()).status is JobStatus.QUEUED


def test_an_unreadable_allow_list_is_a_config_error() -> None:
    azure = Azure(model_tags={"finetune_compute_allow_list": "gpu sizes please"})
    with pytest.raises(PlatformConfigError, match="finetune_compute_allow_list tag is not a list"):
        azure.platform.submit_finetune(request())


# Parameters


def test_parameters_layer_walkthrough_model_settings_request() -> None:
    model_defaults = "{'learning_rate': 2e-05, 'lr_scheduler_type': 'linear', 'num_train_epochs': 2, 'not_an_input': 1}"
    azure = Azure(
        make_settings(finetune_parameters={"num_train_epochs": 1, "learning_rate": 1e-5}),
        model_tags={"model_specific_defaults": model_defaults},
    )
    info = azure.platform.submit_finetune(request(parameters={"learning_rate": "3e-5", "apply_lora": False}))

    sent = azure.sent_inputs(info.name)
    assert sent["per_device_train_batch_size"] == "1"  # walkthrough
    assert sent["lr_scheduler_type"] == "linear"  # model over walkthrough
    assert sent["num_train_epochs"] == "1"  # settings over model
    assert sent["learning_rate"] == "3e-05"  # request over settings
    assert sent["apply_lora"] == "false"  # request's Python bool as the pipeline's string
    assert "not_an_input" not in sent
    assert info.parameters["learning_rate"] == 3e-5
    assert info.display_name == "Phi-3-mini-4k-instruct-support-chats-1bs-linear-ds2-nolora--1savelimit--1seqlen"


def test_bad_parameters_stop_the_submission_with_their_source(azure: Azure) -> None:
    with pytest.raises(PlatformConfigError) as caught:
        azure.platform.submit_finetune(request(parameters={"apply_lora": "yes", "lerning_rate": 1e-5}))
    message = str(caught.value)
    assert "apply_lora='yes' (from the request's parameters) is not allowed: use one of 'true', 'false'" in message
    assert "lerning_rate (from the request's parameters) is not an input" in message
    assert "did you mean learning_rate" in message
    assert azure.emulator.jobs == {}


# Job status


@pytest.mark.parametrize(
    ("azure_status", "status"),
    [
        ("NotStarted", JobStatus.QUEUED),
        ("Queued", JobStatus.QUEUED),
        ("Preparing", JobStatus.QUEUED),
        ("Provisioning", JobStatus.QUEUED),
        ("Starting", JobStatus.QUEUED),
        ("Running", JobStatus.RUNNING),
        ("Finalizing", JobStatus.RUNNING),
        ("CancelRequested", JobStatus.RUNNING),
        ("Completed", JobStatus.COMPLETED),
        ("Failed", JobStatus.FAILED),
        ("NotResponding", JobStatus.RUNNING),  # not an end: the SDK says a run can leave it for any state
        ("Canceled", JobStatus.CANCELED),
        ("Paused", JobStatus.QUEUED),
        ("Unknown", JobStatus.QUEUED),
        (None, JobStatus.QUEUED),
    ],
)
def test_azure_ml_statuses_map_to_the_port(azure_status: str | None, status: JobStatus) -> None:
    assert job_status(azure_status) is status


def test_get_job_reads_every_status_over_the_wire(azure: Azure) -> None:
    name = azure.platform.submit_finetune(request()).name
    for azure_status in ("NotStarted", "Starting", "Preparing", "Running", "NotResponding", "Running", "Completed"):
        azure.emulator.set_job_status(name, azure_status)
        info = azure.platform.get_job(name)
        assert info is not None
        assert (info.status, info.error) == (job_status(azure_status), None)
        assert info.tags["managed-by"] == "ftpilot"

    azure.emulator.set_job_status(name, "Failed")
    failed = azure.platform.get_job(name)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.studio_url
    assert failed.error == f"Azure ML reports the job Failed; the failed step's logs say why: {failed.studio_url}"


def test_an_unknown_job_is_none(azure: Azure) -> None:
    assert azure.platform.get_job("no-such-job") is None


def test_job_metrics_come_from_the_workspace_mlflow(azure: Azure) -> None:
    name = azure.platform.submit_finetune(request()).name
    azure.emulator.set_job_status(name, "Completed", metrics={"train_loss": 0.5, "eval_loss": 0.75})
    mark = azure.wire.recorder.mark()
    assert azure.platform.get_job_metrics(name) == {"train_loss": 0.5, "eval_loss": 0.75}
    assert azure.platform.get_job_metrics(name) == {"train_loss": 0.5, "eval_loss": 0.75}
    assert isinstance(azure.platform.metrics_reader, MlflowRestMetricsReader)
    reads = [s for s in azure.wire.recorder.since(mark) if s.path.endswith(f"/workspaces/{WORKSPACE}")]
    assert len(reads) == 1  # the tracking URI, read once
    with pytest.raises(NotFoundError):
        azure.platform.get_job_metrics("no-such-job")


# Models


def model_request(job_name: str = "ftpilot-d1-a1b2c3", run_id: str = "run-d1") -> ModelRequest:
    return ModelRequest("ftpilot-chat", run_id, job_name, "fine-tuned on d1", {"dataset": "d1"})


def test_registering_a_model_once_per_run_with_integer_versions(azure: Azure) -> None:
    azure.with_model()
    first = azure.platform.register_model(model_request())
    again = azure.platform.register_model(model_request())

    (put,) = azure.sent("PUT", "/models/")
    assert put.path.endswith("/models/ftpilot-chat/versions/1")
    sent = put.body["properties"]
    assert sent["modelUri"] == "azureml://jobs/ftpilot-d1-a1b2c3/outputs/trained_model"
    assert sent["modelType"] == "mlflow_model"
    assert sent["description"] == "fine-tuned on d1"
    assert sent["tags"] == {"dataset": "d1", "ftpilot-run": "run-d1", "managed-by": "ftpilot"}
    assert first == again
    assert first.version == "1"
    assert first.id.endswith("/models/ftpilot-chat/versions/1")
    assert azure.platform.get_model("ftpilot-chat", "1") == first
    assert azure.platform.get_model("ftpilot-chat", "4") is None


def test_the_next_run_takes_the_next_version_and_a_crashed_one_finds_its_own(azure: Azure) -> None:
    azure.emulator.page_size = 1  # the version list comes in pages (nextLink)
    jobs = {"run-d1": "ftpilot-d1-a1b2c3", "run-d2": "ftpilot-d2-000000", "run-d3": "ftpilot-d3-000000"}
    for job in jobs.values():
        azure.platform.submit_finetune(request(job))
        azure.emulator.set_job_status(job, "Completed")
    versions = [azure.platform.register_model(model_request(job, run)).version for run, job in jobs.items()]
    assert versions == ["1", "2", "3"]
    # A rollout that crashed after registering finds its version again, wherever it is in the list.
    assert azure.platform.register_model(model_request(jobs["run-d2"], "run-d2")).version == "2"
    assert len(azure.sent("PUT", "/models/")) == 3
    assert any("$skipToken" in s.url for s in azure.sent("GET", "/models/ftpilot-chat/versions"))


def test_a_version_taken_meanwhile_by_another_run_makes_this_one_take_the_next(azure: Azure) -> None:
    for job in ("ftpilot-d1-a1b2c3", "ftpilot-d2-000000"):
        azure.platform.submit_finetune(request(job))
        azure.emulator.set_job_status(job, "Completed")
    other = azure.wire.platform()
    # This run lists (nothing yet); the other run registers version 1 before this run's PUT lands.
    azure.emulator.inject(Fault("PUT", "/models/ftpilot-chat/versions/1", status=409, code="UserError"))
    other_model = other.register_model(model_request("ftpilot-d2-000000", "run-d2"))
    mine = azure.platform.register_model(model_request())
    assert (other_model.version, mine.version) == ("1", "2")
    assert [s.path.rsplit("/", 1)[-1] for s in azure.sent("PUT", "/models/")] == ["1", "1", "2"]


def test_a_run_version_holding_another_jobs_model_is_a_conflict(azure: Azure) -> None:
    for job in ("job-a", "job-b"):
        azure.platform.submit_finetune(request(job))
        azure.emulator.set_job_status(job, "Completed")
    azure.platform.register_model(model_request("job-a"))
    with pytest.raises(ConflictError, match="already holds job job-a's output"):
        azure.platform.register_model(model_request("job-b"))


def test_the_service_refuses_a_version_that_is_not_a_positive_integer(azure: Azure) -> None:
    """The emulator is as strict as the service: the old hex versions would have failed every run."""
    from azure.ai.ml.entities import Model

    azure.with_model()
    model = Model(name="x", version="c4cb6e270c76b8ba", path="azureml://jobs/ftpilot-d1-a1b2c3/outputs/trained_model")
    with pytest.raises(Exception, match="positive integers") as refused:
        azure.wire.platform().ml_client.models.create_or_update(model)
    assert getattr(refused.value, "status_code", None) == 400


# Endpoints and deployments


def test_creating_an_endpoint_begins_and_returns(azure: Azure) -> None:
    promptly(lambda: azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models", {"team": "ml"})))

    (put,) = azure.sent("PUT", f"/onlineEndpoints/{ENDPOINT}")
    assert put.body["properties"]["authMode"] == "Key"
    assert put.body["properties"]["description"] == "chat models"
    assert put.body["tags"] == {"team": "ml", "managed-by": "ftpilot"}

    creating = azure.platform.get_endpoint(ENDPOINT)
    azure.emulator.tick()
    done = azure.platform.get_endpoint(ENDPOINT)
    assert creating is not None
    assert creating.state is ProvisioningState.CREATING
    assert done is not None
    assert done.state is ProvisioningState.SUCCEEDED
    assert done.scoring_uri == f"{azure.wire.data_plane.base}{ENDPOINT}/score"
    assert done.created_at and datetime.fromisoformat(done.created_at.replace("+0000", "+00:00")).year >= 2026
    assert done.tags["team"] == "ml"
    assert [endpoint.name for endpoint in azure.platform.list_endpoints()] == [ENDPOINT]
    assert azure.platform.get_endpoint("nope") is None


def test_an_existing_endpoint_is_left_alone_and_a_failed_one_begun_again(azure: Azure) -> None:
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))  # still creating
    assert len(azure.sent("PUT", f"/onlineEndpoints/{ENDPOINT}")) == 1

    azure.emulator.settle()
    azure.emulator.endpoints[ENDPOINT]["properties"]["provisioningState"] = "Failed"
    failed = azure.platform.get_endpoint(ENDPOINT)
    assert failed is not None
    assert failed.state is ProvisioningState.FAILED
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    assert len(azure.sent("PUT", f"/onlineEndpoints/{ENDPOINT}")) == 2


def deployment_request(name: str = "blue-v3", model_id: str = MODEL_ID) -> DeploymentRequest:
    return DeploymentRequest(ENDPOINT, name, model_id, "Standard_NC24ads_A100_v4", 2, {"model": "chat:1"})


def test_creating_a_deployment_begins_and_returns(azure: Azure) -> None:
    model_id = azure.with_model()
    azure.endpoint()
    promptly(lambda: azure.platform.begin_create_deployment(deployment_request(model_id=model_id)))

    (put,) = azure.sent("PUT", "/deployments/blue-v3")
    sent = put.body["properties"]
    assert sent["model"] == model_id
    assert sent["instanceType"] == "Standard_NC24ads_A100_v4"
    assert put.body["sku"]["capacity"] == 2
    assert sent["livenessProbe"]["initialDelay"] == "PT10M"
    assert sent["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert sent["endpointComputeType"] == "Managed"
    assert put.body["tags"] == {"model": "chat:1", "managed-by": "ftpilot"}

    creating = azure.platform.get_deployment(ENDPOINT, "blue-v3")
    assert creating is not None
    assert creating.state is ProvisioningState.CREATING
    azure.emulator.tick()
    (listed,) = azure.platform.list_deployments(ENDPOINT)
    assert (listed.name, listed.state, listed.model_id, listed.error) == (
        "blue-v3",
        ProvisioningState.SUCCEEDED,
        model_id,
        None,
    )
    assert azure.platform.get_deployment(ENDPOINT, "green") is None
    assert azure.platform.list_deployments("no-such-endpoint") == []

    azure.platform.begin_create_deployment(deployment_request(model_id=model_id))
    assert len(azure.sent("PUT", "/deployments/blue-v3")) == 1


def test_a_deployment_of_a_model_that_does_not_exist_is_refused_by_the_service(azure: Azure) -> None:
    azure.endpoint()
    with pytest.raises(PlatformConfigError, match="does not exist"):
        azure.platform.begin_create_deployment(deployment_request())


def test_a_deployment_on_a_size_the_base_model_cannot_serve_on_is_refused_before_anything_begins() -> None:
    allowed = "['Standard_NC24ads_A100_v4', 'Standard_NC48ads_A100_v4']"
    azure = Azure(model_tags={"inference_compute_allow_list": allowed})
    model_id = azure.with_model()
    azure.endpoint()
    with pytest.raises(PlatformConfigError, match="FTPILOT_INFERENCE_INSTANCE_TYPE") as refused:
        azure.platform.begin_create_deployment(
            replace(deployment_request(model_id=model_id), instance_type="Standard_NC6s_v3", base_model=BASE_MODEL)
        )
    assert "Standard_NC48ads_A100_v4" in str(refused.value)
    assert azure.sent("PUT", "/deployments/") == []

    azure.platform.begin_create_deployment(replace(deployment_request(model_id=model_id), base_model=BASE_MODEL))
    assert len(azure.sent("PUT", "/deployments/")) == 1


def test_a_failed_deployment_shows_its_last_log_lines(azure: Azure) -> None:
    model_id = azure.with_model()
    azure.endpoint()
    azure.emulator.deployment_outcomes["blue-v3"] = "Failed"
    azure.platform.begin_create_deployment(deployment_request(model_id=model_id))
    azure.emulator.settle()

    info = azure.platform.get_deployment(ENDPOINT, "blue-v3")
    assert info is not None
    assert info.state is ProvisioningState.FAILED
    assert info.error is not None
    assert "provisioning failed" in info.error
    assert "CUDA out of memory" in info.error
    (logs,) = azure.sent("POST", "/getLogs")
    assert logs.body["tail"] == 20


def test_a_deployment_serving_another_model_is_a_conflict(azure: Azure) -> None:
    model_id = azure.with_model()
    azure.endpoint()
    azure.platform.begin_create_deployment(deployment_request(model_id=model_id))
    with pytest.raises(ConflictError, match="already serves model"):
        azure.platform.begin_create_deployment(deployment_request(model_id=model_id.replace("/1", "/4")))
    azure.platform.begin_create_deployment(deployment_request(model_id="azureml:ftpilot-chat:1"))  # short form
    assert len(azure.sent("PUT", "/deployments/")) == 1


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (MODEL_ID, "azureml:ftpilot-chat:1", True),
        (MODEL_ID, MODEL_ID.upper().replace("VERSIONS/1", "versions/1"), True),
        (MODEL_ID, "azureml:ftpilot-chat:4", False),
        ("azureml://registries/azureml/models/chat/versions/3", "azureml:chat:3", True),
        ("chat", "CHAT", True),
        ("chat", "azureml:chat:3", False),
    ],
)
def test_model_references_compare_by_name_and_version(one: str, other: str, same: bool) -> None:
    assert same_model(one, other) is same


def test_setting_traffic_begins_an_endpoint_update(azure: Azure) -> None:
    model_id = azure.with_model()
    azure.endpoint()
    for name in ("blue-v3", "green-v4"):
        azure.platform.begin_create_deployment(deployment_request(name, model_id))
    azure.emulator.settle()
    promptly(lambda: azure.platform.begin_set_traffic(ENDPOINT, {"blue-v3": 90, "green-v4": 10}))

    updated = azure.sent("PUT", f"/onlineEndpoints/{ENDPOINT}")[-1]
    assert updated.body["properties"]["traffic"] == {"blue-v3": 90, "green-v4": 10}
    endpoint = azure.platform.get_endpoint(ENDPOINT)
    assert endpoint is not None
    assert endpoint.state is ProvisioningState.UPDATING
    azure.emulator.tick()
    endpoint = azure.platform.get_endpoint(ENDPOINT)
    assert endpoint is not None and endpoint.traffic == {"blue-v3": 90, "green-v4": 10}
    with pytest.raises(NotFoundError):
        azure.platform.begin_set_traffic("no-such-endpoint", {"a": 100})
    with pytest.raises(NotFoundError, match="has no deployment red"):  # refused before anything is sent
        azure.platform.begin_set_traffic(ENDPOINT, {"red": 100})
    with pytest.raises(PlatformConfigError, match="add up to 100, not 90"):  # the service's own refusal
        azure.platform.begin_set_traffic(ENDPOINT, {"blue-v3": 60, "green-v4": 30})


def test_a_change_while_another_is_under_way_is_a_conflict(azure: Azure) -> None:
    azure.deployed()
    azure.platform.begin_set_traffic(ENDPOINT, {"blue-v3": 100})
    with pytest.raises(ConflictError, match="operation in progress"):
        azure.platform.begin_set_traffic(ENDPOINT, {"blue-v3": 100})


def test_deletes_begin_and_are_idempotent(azure: Azure) -> None:
    azure.deployed()

    promptly(lambda: azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3"))
    azure.emulator.settle()
    azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3")
    promptly(lambda: azure.platform.begin_delete_endpoint(ENDPOINT))
    azure.emulator.settle()
    azure.platform.begin_delete_endpoint(ENDPOINT)
    azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3")

    assert azure.platform.get_deployment(ENDPOINT, "blue-v3") is None
    assert azure.platform.get_endpoint(ENDPOINT) is None
    assert azure.sent("DELETE", "/deployments/blue-v3")  # the repeats found nothing to delete (204)


def test_a_deployment_that_takes_traffic_is_not_deleted(azure: Azure) -> None:
    azure.deployed()
    azure.platform.begin_set_traffic(ENDPOINT, {"blue-v3": 100})
    azure.emulator.settle()
    with pytest.raises(ConflictError, match="takes 100% of the traffic"):
        azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3")
    assert azure.sent("DELETE", "/deployments/") == []


# Scoring


def test_invoke_posts_to_the_scoring_uri_with_the_key_from_list_keys(azure: Azure) -> None:
    azure.deployed()
    payload = {"input_data": {"input_string": [[{"role": "user", "content": "Why tides?"}]], "parameters": {}}}

    assert azure.platform.invoke(ENDPOINT, "blue-v3", payload, timeout_s=10) == azure.emulator.answer
    assert len(azure.sent("POST", "/listKeys")) == 1
    assert len(azure.emulator.score_requests[ENDPOINT]) == 1
    with pytest.raises(PlatformError, match="HTTP 404"):
        azure.platform.invoke(ENDPOINT, "green", payload, timeout_s=10)


def test_open_scoring_reads_the_key_once_for_many_calls(azure: Azure) -> None:
    azure.deployed()
    payload = {"input_data": {"input_string": [[{"role": "user", "content": "Why tides?"}]], "parameters": {}}}
    score = azure.platform.open_scoring(ENDPOINT)
    answers = [score("blue-v3", payload, 10) for _ in range(5)]
    assert answers == [azure.emulator.answer] * 5
    assert len(azure.sent("POST", "/listKeys")) == 1  # a gate's 2K calls cost one key fetch
    assert len(azure.emulator.score_requests[ENDPOINT]) == 5
    with pytest.raises(PlatformError, match="HTTP 404"):
        score("green", payload, 10)


def test_invoke_of_an_endpoint_that_does_not_exist_is_not_found(azure: Azure) -> None:
    with pytest.raises(NotFoundError):
        azure.platform.invoke("nope", "blue", {"input_data": {}}, timeout_s=5)


# Request counts


def test_request_counts_come_per_minute_from_one_azure_monitor_query(azure: Azure) -> None:
    azure.endpoint()
    now = datetime.now(UTC)
    # Half a minute back at least: a point in the minute the window ends in is not yet reported.
    ago = [timedelta(minutes=m, seconds=30) for m in (0, 1, 1, 4, 4, 4, 30)]
    azure.emulator.score_requests[ENDPOINT] = [now - offset for offset in ago]
    counts = azure.platform.endpoint_requests(ENDPOINT, 600)
    assert counts.within(600) == 6
    assert counts.within(200) == 3  # a shorter window, from the same answer
    with pytest.raises(ValueError):
        counts.within(601)

    (query,) = azure.sent("GET", "/providers/Microsoft.Insights/metrics")
    assert query.path.endswith(f"/onlineEndpoints/{ENDPOINT}/providers/Microsoft.Insights/metrics")
    assert f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/" in query.path
    params = dict(part.split("=", 1) for part in query.url.split("?", 1)[1].split("&"))
    assert (params["interval"], params["metricnames"], params["aggregation"]) == (
        "PT1M",
        "RequestsPerMinute",
        "Average",
    )
    start, end = (datetime.fromisoformat(stamp.replace("%3A", ":")) for stamp in params["timespan"].split("%2F"))
    assert (end - start).total_seconds() == 600


def test_request_counts_of_a_quiet_or_missing_endpoint(azure: Azure) -> None:
    azure.endpoint()
    assert azure.platform.endpoint_requests(ENDPOINT, 30).within(30) == 0
    with pytest.raises(NotFoundError):
        azure.platform.endpoint_requests("gone", 600)


def test_the_sdk_pollers_print_nothing_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """azure-ai-ml's pollers print '.' per status check from their own threads; ftpilot's stdout is JSON."""
    import time

    wire = Wire.start()
    platform = wire.platform()
    platform.begin_create_endpoint(EndpointRequest("ep-quiet", "quiet"))
    wire.emulator.settle()
    mark = wire.recorder.mark()
    platform.begin_delete_endpoint("ep-quiet")  # deletes poll with AzureMLPolling, the printing kind
    deadline = time.monotonic() + 20  # the SDK polls every 5 s
    while not any(s.is_poll and s.thread.startswith("LROPoller") for s in wire.recorder.since(mark)):
        assert time.monotonic() < deadline, "the poller never checked the operation"
        time.sleep(0.1)
    time.sleep(0.2)  # past the status update that would print
    wire.emulator.settle()
    assert capsys.readouterr().out == ""
