"""The Azure ML adapter driven against fakes of its clients (tests/fakes/azureml_client.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import datetime

import pytest

from shared.config import Settings
from shared.platform.azureml import AzureMLPlatform
from shared.platform.azureml.metrics import MlflowRestMetricsReader
from shared.platform.azureml.rollout import same_model
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
    ProvisioningState,
)
from tests.fakes.azureml_client import (
    BASE_MODEL,
    CLUSTER,
    CLUSTER_SIZE,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    FakeMLClient,
    FakeMonitorClient,
    FakeRegistryClient,
)
from tests.paths import REPO

# azure-ai-ml's marshmallow-3 schemas warn about marshmallow 4 on every load: the SDK's to fix, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

ENDPOINT = "ftpilot-chat"
MODEL_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE}/models/chat/versions/3"
)


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: object) -> object:
        raise AssertionError("the fakes need no token")


class FakeMetricsReader:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def final_metrics(self, run_id: str) -> dict[str, float]:
        self.asked.append(run_id)
        return {"train_loss": 0.91, "eval_loss": 1.07}


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "platform": "azureml",
        "subscription_id": SUBSCRIPTION,
        "resource_group": RESOURCE_GROUP,
        "workspace_name": WORKSPACE,
        "intake_container": "datasets",
        "datastore": "ftpilot_datasets",
        "compute_cluster": CLUSTER,
        "base_model": BASE_MODEL,
        "experiment_name": "ftpilot-chat-completion",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Azure:
    """The adapter wired to fakes, with the fakes at hand."""

    def __init__(self, settings: Settings | None = None, model_tags: dict[str, str] | None = None) -> None:
        self.ml = FakeMLClient()
        self.registry = FakeRegistryClient(model_tags)
        self.monitor = FakeMonitorClient()
        self.metrics = FakeMetricsReader()
        self.platform = AzureMLPlatform(
            settings or make_settings(),
            ml_client=self.ml,
            registry_client=self.registry,
            credential=FakeCredential(),
            metrics_reader=self.metrics,
            monitor_client=self.monitor,
        )

    def sent_inputs(self, job_name: str) -> dict[str, str]:
        """The pipeline node's inputs as the service received them (literal values and asset URIs)."""
        node = self.ml.jobs.rest[job_name]["properties"]["jobs"]["chat_completion_pipeline"]
        return {name: spec.get("value", spec.get("uri")) for name, spec in node["inputs"].items()}

    def pollers(self) -> list:
        return self.ml.online_endpoints.pollers + self.ml.online_deployments.pollers


@pytest.fixture
def azure() -> Azure:
    return Azure()


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
    platform = AzureMLPlatform(make_settings(subscription_id=None, workspace_name=None), credential=FakeCredential())
    with pytest.raises(PlatformConfigError, match="set FTPILOT_SUBSCRIPTION_ID, FTPILOT_WORKSPACE_NAME"):
        platform.get_job("any")


# Submission


def test_submission_builds_the_walkthrough_pipeline(azure: Azure) -> None:
    info = azure.platform.submit_finetune(request())

    (job,) = azure.ml.jobs.submitted
    assert job.name == "ftpilot-d1-a1b2c3"
    assert job.display_name == "Phi-3-mini-4k-instruct-support-chats-1bs-cosine-ds2-lora--1savelimit--1seqlen"
    assert job.tags == {"dataset": "d1", "managed-by": "ftpilot"}
    assert job.experiment_name == "ftpilot-chat-completion"
    assert job.settings.force_rerun is True
    assert job.settings.continue_on_step_failure is False
    assert job.outputs["trained_model"] is not None
    (create,) = azure.ml.recorder.named("jobs.create_or_update")
    assert create[2]["experiment_name"] == "ftpilot-chat-completion"
    assert azure.registry.recorder.named("registry.models.get")[0][2]["label"] == "latest"
    assert azure.registry.recorder.named("registry.components.get")[0][2] == {
        "name": "chat_completion_pipeline",
        "version": None,
        "label": "latest",
    }
    sent = azure.sent_inputs(job.name)
    assert sent == {
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
    assert info.name == job.name
    assert info.status is JobStatus.QUEUED
    assert info.display_name == job.display_name
    assert info.parameters["learning_rate"] == 5e-6
    assert info.studio_url and info.studio_url.startswith("https://ml.azure.com/runs/ftpilot-d1-a1b2c3")


def test_resubmission_returns_the_existing_job_without_submitting(azure: Azure) -> None:
    first = azure.platform.submit_finetune(request())
    azure.ml.jobs.set_status(first.name, "Running")
    again = azure.platform.submit_finetune(request())

    assert len(azure.ml.recorder.named("jobs.create_or_update")) == 1
    assert len(azure.ml.recorder.named("compute.get")) == 1
    assert (again.name, again.status) == (first.name, JobStatus.RUNNING)


def test_a_name_conflict_during_create_reads_the_winning_job(azure: Azure) -> None:
    azure.ml.jobs.race_next_create = True
    info = azure.platform.submit_finetune(request())

    assert info.name == "ftpilot-d1-a1b2c3"
    assert info.status is JobStatus.QUEUED
    assert azure.ml.jobs.submitted == []
    assert list(azure.ml.jobs.rest) == ["ftpilot-d1-a1b2c3"]


def test_the_request_base_model_is_looked_up_in_the_registry(azure: Azure) -> None:
    with pytest.raises(PlatformConfigError, match=r"model 'Llama-9' is not in registry 'azureml'.*FTPILOT_BASE_MODEL"):
        azure.platform.submit_finetune(request(base_model="Llama-9"))
    assert azure.ml.jobs.submitted == []


def test_a_registry_without_the_pipeline_component_is_a_config_error(azure: Azure) -> None:
    azure.registry.components.available = False
    with pytest.raises(PlatformConfigError, match="component 'chat_completion_pipeline' is not in registry 'azureml'"):
        azure.platform.submit_finetune(request())


def test_data_outside_the_datastore_container_is_refused(azure: Azure) -> None:
    with pytest.raises(PlatformConfigError, match=r"not in the intake container 'datasets'.*FTPILOT_DATASTORE"):
        azure.platform.submit_finetune(request(train=DataRef("elsewhere", "train.jsonl")))
    with pytest.raises(PlatformConfigError, match="which the pipeline rejects"):
        azure.platform.submit_finetune(request(test=DataRef("datasets", "prepared/o'brien/test.jsonl")))


# Compute check


def with_cluster(azure: Azure, size: str, state: str = "Succeeded") -> Azure:
    azure.ml.compute.add(CLUSTER, size, state)
    return azure


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        (
            lambda azure: azure.ml.compute.clusters.clear(),
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
    assert azure.ml.jobs.submitted == []


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
    assert azure.ml.jobs.submitted == []


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
        ("NotResponding", JobStatus.FAILED),
        ("Canceled", JobStatus.CANCELED),
        ("Paused", JobStatus.QUEUED),
        ("Unknown", JobStatus.QUEUED),
        (None, JobStatus.QUEUED),
    ],
)
def test_azure_ml_statuses_map_to_the_port(azure_status: str | None, status: JobStatus) -> None:
    assert job_status(azure_status) is status


def test_get_job_reads_the_status_and_explains_a_failure(azure: Azure) -> None:
    name = azure.platform.submit_finetune(request()).name
    for azure_status, status in [("Running", JobStatus.RUNNING), ("Completed", JobStatus.COMPLETED)]:
        azure.ml.jobs.set_status(name, azure_status)
        info = azure.platform.get_job(name)
        assert info is not None
        assert (info.status, info.error) == (status, None)
        assert info.tags["managed-by"] == "ftpilot"

    azure.ml.jobs.set_status(name, "Failed")
    failed = azure.platform.get_job(name)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.studio_url
    assert failed.error == f"Azure ML reports the job Failed; the failed step's logs say why: {failed.studio_url}"


def test_an_unknown_job_is_none(azure: Azure) -> None:
    assert azure.platform.get_job("no-such-job") is None


def test_job_metrics_come_from_the_metrics_reader(azure: Azure) -> None:
    assert azure.platform.get_job_metrics("ftpilot-d1-a1b2c3") == {"train_loss": 0.91, "eval_loss": 1.07}
    assert azure.metrics.asked == ["ftpilot-d1-a1b2c3"]


def test_the_default_metrics_reader_uses_the_workspace_tracking_uri() -> None:
    ml = FakeMLClient()
    platform = AzureMLPlatform(make_settings(), ml_client=ml, credential=FakeCredential())
    assert isinstance(platform.metrics_reader, MlflowRestMetricsReader)
    assert ml.recorder.named("workspaces.get") == [("workspaces.get", (WORKSPACE,), {})]


# Models


def model_request(job_name: str = "ftpilot-d1-a1b2c3") -> ModelRequest:
    return ModelRequest("ftpilot-chat", "3", job_name, "fine-tuned on d1", {"dataset": "d1"})


def test_registering_a_model_once(azure: Azure) -> None:
    first = azure.platform.register_model(model_request())
    again = azure.platform.register_model(model_request())

    (create,) = azure.ml.recorder.named("models.create_or_update")
    sent = create[1][0]
    assert sent.path == "azureml://jobs/ftpilot-d1-a1b2c3/outputs/trained_model"
    assert sent.type == "mlflow_model"
    assert (sent.name, sent.version, sent.description) == ("ftpilot-chat", "3", "fine-tuned on d1")
    assert sent.tags == {"dataset": "d1", "managed-by": "ftpilot"}
    assert first == again
    assert first.id.endswith("/models/ftpilot-chat/versions/3")
    assert azure.platform.get_model("ftpilot-chat", "3") == first
    assert azure.platform.get_model("ftpilot-chat", "4") is None


def test_a_version_holding_another_jobs_model_is_a_conflict(azure: Azure) -> None:
    azure.platform.register_model(model_request("job-a"))
    with pytest.raises(ConflictError, match="already holds job job-a's output"):
        azure.platform.register_model(model_request("job-b"))


# Endpoints and deployments


def test_creating_an_endpoint_begins_and_returns(azure: Azure) -> None:
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models", {"team": "ml"}))

    (call,) = azure.ml.recorder.named("online_endpoints.begin_create_or_update")
    sent = call[1][0]
    assert (sent.name, sent.description, sent.auth_mode) == (ENDPOINT, "chat models", "key")
    assert sent.tags == {"team": "ml", "managed-by": "ftpilot"}
    assert not any(poller.waited for poller in azure.pollers())

    creating = azure.platform.get_endpoint(ENDPOINT)
    done = azure.platform.get_endpoint(ENDPOINT)
    assert creating is not None
    assert creating.state is ProvisioningState.CREATING
    assert done is not None
    assert done.state is ProvisioningState.SUCCEEDED
    assert done.scoring_uri == azure.ml.online_endpoints.scoring_uri
    assert done.created_at == "2025-01-02T03:04:05.000000+0000"
    assert done.tags["team"] == "ml"
    assert [endpoint.name for endpoint in azure.platform.list_endpoints()] == [ENDPOINT]
    assert azure.platform.get_endpoint("nope") is None


def test_an_existing_endpoint_is_left_alone_and_a_failed_one_begun_again(azure: Azure) -> None:
    azure.ml.online_endpoints.outcome = "Failed"
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))  # still creating
    assert len(azure.ml.recorder.named("online_endpoints.begin_create_or_update")) == 1

    failed = azure.platform.get_endpoint(ENDPOINT)
    assert failed is not None
    assert failed.state is ProvisioningState.FAILED
    azure.ml.online_endpoints.outcome = "Succeeded"
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    assert len(azure.ml.recorder.named("online_endpoints.begin_create_or_update")) == 2


def deployment_request(name: str = "blue-v3", model_id: str = MODEL_ID) -> DeploymentRequest:
    return DeploymentRequest(ENDPOINT, name, model_id, "Standard_NC24ads_A100_v4", 2, {"model": "chat:3"})


def test_creating_a_deployment_begins_and_returns(azure: Azure) -> None:
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_create_deployment(deployment_request())

    (call,) = azure.ml.recorder.named("online_deployments.begin_create_or_update")
    sent = call[1][0]
    assert (sent.name, sent.endpoint_name, sent.model) == ("blue-v3", ENDPOINT, MODEL_ID)
    assert (sent.instance_type, sent.instance_count) == ("Standard_NC24ads_A100_v4", 2)
    assert sent.liveness_probe.initial_delay == 600
    assert sent.request_settings.request_timeout_ms == 90000
    assert sent.tags == {"model": "chat:3", "managed-by": "ftpilot"}
    assert not any(poller.waited for poller in azure.pollers())

    creating = azure.platform.get_deployment(ENDPOINT, "blue-v3")
    assert creating is not None
    assert creating.state is ProvisioningState.CREATING
    (listed,) = azure.platform.list_deployments(ENDPOINT)
    assert (listed.name, listed.state, listed.model_id, listed.error) == (
        "blue-v3",
        ProvisioningState.SUCCEEDED,
        MODEL_ID,
        None,
    )
    assert azure.platform.get_deployment(ENDPOINT, "green") is None
    assert azure.platform.list_deployments("no-such-endpoint") == []

    azure.platform.begin_create_deployment(deployment_request())
    assert len(azure.ml.recorder.named("online_deployments.begin_create_or_update")) == 1


def test_a_deployment_on_a_size_the_base_model_cannot_serve_on_is_refused_before_anything_begins() -> None:
    allowed = "['Standard_NC24ads_A100_v4', 'Standard_NC48ads_A100_v4']"
    azure = Azure(model_tags={"inference_compute_allow_list": allowed})
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    with pytest.raises(PlatformConfigError, match="FTPILOT_INFERENCE_INSTANCE_TYPE") as refused:
        azure.platform.begin_create_deployment(
            replace(deployment_request(), instance_type="Standard_NC6s_v3", base_model=BASE_MODEL)
        )
    assert "Standard_NC48ads_A100_v4" in str(refused.value)
    assert azure.ml.recorder.named("online_deployments.begin_create_or_update") == []

    azure.platform.begin_create_deployment(replace(deployment_request(), base_model=BASE_MODEL))  # A100 allowed
    assert len(azure.ml.recorder.named("online_deployments.begin_create_or_update")) == 1
    lookups = azure.registry.recorder.named("registry.models.get")
    assert [(call[1][0], call[2]["label"]) for call in lookups] == [(BASE_MODEL, "latest")] * 2


def test_a_failed_deployment_shows_its_last_log_lines(azure: Azure) -> None:
    azure.ml.online_deployments.outcome = "Failed"
    azure.ml.online_deployments.reads_in_progress = 0
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_create_deployment(deployment_request())

    info = azure.platform.get_deployment(ENDPOINT, "blue-v3")
    assert info is not None
    assert info.state is ProvisioningState.FAILED
    assert info.error is not None
    assert "provisioning failed" in info.error
    assert "CUDA out of memory" in info.error


def test_a_deployment_serving_another_model_is_a_conflict(azure: Azure) -> None:
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_create_deployment(deployment_request())
    with pytest.raises(ConflictError, match="already serves model"):
        azure.platform.begin_create_deployment(deployment_request(model_id=MODEL_ID.replace("/3", "/4")))
    azure.platform.begin_create_deployment(deployment_request(model_id="azureml:chat:3"))  # same model, short form
    assert len(azure.ml.recorder.named("online_deployments.begin_create_or_update")) == 1


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (MODEL_ID, "azureml:chat:3", True),
        (MODEL_ID, MODEL_ID.upper().replace("VERSIONS/3", "versions/3"), True),
        (MODEL_ID, "azureml:chat:4", False),
        ("azureml://registries/azureml/models/chat/versions/3", "azureml:chat:3", True),
        ("chat", "CHAT", True),
        ("chat", "azureml:chat:3", False),
    ],
)
def test_model_references_compare_by_name_and_version(one: str, other: str, same: bool) -> None:
    assert same_model(one, other) is same


def test_setting_traffic_begins_an_endpoint_update(azure: Azure) -> None:
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_set_traffic(ENDPOINT, {"blue-v3": 90, "green-v4": 10})

    updated = azure.ml.recorder.named("online_endpoints.begin_create_or_update")[-1][1][0]
    assert updated.traffic == {"blue-v3": 90, "green-v4": 10}
    endpoint = azure.platform.get_endpoint(ENDPOINT)
    assert endpoint is not None
    assert endpoint.state is ProvisioningState.UPDATING
    assert endpoint.traffic == {"blue-v3": 90, "green-v4": 10}
    assert not any(poller.waited for poller in azure.pollers())
    with pytest.raises(NotFoundError):
        azure.platform.begin_set_traffic("no-such-endpoint", {"a": 100})


def test_deletes_begin_and_are_idempotent(azure: Azure) -> None:
    azure.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    azure.platform.begin_create_deployment(deployment_request())

    azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3")
    azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3")
    azure.platform.begin_delete_endpoint(ENDPOINT)
    azure.platform.begin_delete_endpoint(ENDPOINT)
    azure.platform.begin_delete_deployment(ENDPOINT, "blue-v3")

    assert azure.platform.get_deployment(ENDPOINT, "blue-v3") is None
    assert azure.platform.get_endpoint(ENDPOINT) is None
    assert len(azure.ml.recorder.named("online_deployments.begin_delete")) == 3
    assert len(azure.ml.recorder.named("online_endpoints.begin_delete")) == 2
    assert not any(poller.waited for poller in azure.pollers())


# Request counts


def test_request_count_sums_the_window_counting_missing_points_as_zero(azure: Azure) -> None:
    azure.monitor.metrics.points = [3.0, None, 2.0, 0.0, None]
    assert azure.platform.endpoint_request_count(ENDPOINT, 600) == 5

    ((resource, query),) = azure.monitor.metrics.calls
    assert resource == (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}/onlineEndpoints/{ENDPOINT}"
    )
    assert (query["interval"], query["metricnames"], query["aggregation"]) == ("PT1M", "RequestsPerMinute", "Average")
    start, end = (datetime.fromisoformat(stamp) for stamp in query["timespan"].split("/"))
    assert (end - start).total_seconds() == 600


def test_request_count_of_a_quiet_or_missing_endpoint(azure: Azure) -> None:
    assert azure.platform.endpoint_request_count(ENDPOINT, 30) == 0
    start, end = (datetime.fromisoformat(s) for s in azure.monitor.metrics.calls[0][1]["timespan"].split("/"))
    assert (end - start).total_seconds() == 60  # never below the metric's one-minute grain
    azure.monitor.metrics.missing.add("gone")
    with pytest.raises(NotFoundError):
        azure.platform.endpoint_request_count("gone", 600)
