"""One meaning of the ML-platform port, on every adapter and on the fake the domain tests use.

Parametrised over the Azure ML adapter (real SDK clients over the workspace emulator), the
in-memory ``FakePlatform`` and, for what needs no trained model, the local workspace (whose
deployments, which need one, are held to the same rules in ``test_local_workspace.py``):

* a repeated create returns or leaves what exists; another model under a taken deployment name
  is a conflict;
* a get of something missing is None, a list of a missing endpoint's deployments is empty;
* deleting something missing is a no-op;
* ``begin_*`` returns without waiting for its operation;
* traffic names existing deployments and adds up to 100; a deployment that takes traffic is not
  deleted;
* metrics and request counts of unknown jobs and endpoints are ``NotFoundError``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared.platform.port import (
    ConflictError,
    DataRef,
    DeploymentRequest,
    EndpointRequest,
    FineTuneRequest,
    JobStatus,
    ModelRequest,
    NotFoundError,
    PlatformConfigError,
    ProvisioningState,
)
from tests.promptly import promptly

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

ENDPOINT = "ep-contract"
SIZE = "Standard_NC24ads_A100_v4"


def finetune(job: str) -> FineTuneRequest:
    return FineTuneRequest(
        job, "Phi-3-mini-4k-instruct", DataRef("datasets", "a/train.jsonl"), DataRef("datasets", "a/test.jsonl"), "chat"
    )


@dataclass
class Harness:
    """An adapter, and how a test makes time pass and jobs complete on it."""

    name: str
    platform: Any
    backend: Any

    def settle(self) -> None:
        """Let every long-running operation begun so far reach its end."""
        if self.name == "azure":
            self.backend.emulator.settle()
        elif self.name == "fake":
            for _ in range(4):  # the fake moves on as reads observe it
                for endpoint in list(self.platform.endpoints):
                    self.platform.get_endpoint(endpoint)
                    for deployment in self.platform.list_deployments(endpoint):
                        self.platform.get_deployment(endpoint, deployment.name)
        else:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = [e.state for e in self.platform.list_endpoints()]
                if all(state.terminal for state in states):
                    return
                time.sleep(0.1)
            raise AssertionError("local endpoints did not start")

    def settle_jobs(self) -> None:
        """Let a requested cancel take effect (the service moves CancelRequested on to Canceled)."""
        if self.name == "azure":
            self.backend.emulator.settle()

    def completed_job(self, name: str) -> str:
        request = finetune(name)
        self.platform.submit_finetune(request)
        if self.name == "azure":
            self.backend.emulator.set_job_status(name, "Completed")
        else:
            self.platform.set_job(name, JobStatus.COMPLETED)
        return name

    def model_id(self, run: str = "run-1", job: str = "ftpilot-job-1") -> str:
        self.completed_job(job)
        return self.platform.register_model(ModelRequest("chat", run, job, "contract")).id

    def endpoint(self) -> None:
        self.platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "contract"))
        self.settle()


def _azure() -> Iterator[Harness]:
    from tests.azure_wire.workspace import Wire

    wire = Wire.start()
    yield Harness("azure", wire.platform(), wire)
    wire.close()


def _fake() -> Iterator[Harness]:
    from tests.fakes.platform import FakePlatform

    platform = FakePlatform()
    yield Harness("fake", platform, platform)


def _local(tmp_path: Any) -> Iterator[Harness]:
    from shared.config import Settings
    from shared.platform.local import LocalPlatform

    platform = LocalPlatform(Settings(data_dir=tmp_path / "ftpilot"))
    yield Harness("local", platform, platform)
    platform.shutdown()


@pytest.fixture(params=["azure", "fake", "local"])
def any_adapter(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Harness]:
    harnesses = {"azure": _azure, "fake": _fake, "local": lambda: _local(tmp_path)}
    yield from harnesses[request.param]()


@pytest.fixture(params=["azure", "fake"])
def with_models(request: pytest.FixtureRequest) -> Iterator[Harness]:
    yield from {"azure": _azure, "fake": _fake}[request.param]()


# --- every adapter ----------------------------------------------------------------------------


def test_a_get_of_something_missing_is_none(any_adapter: Harness) -> None:
    platform = any_adapter.platform
    assert platform.get_job("ftpilot-nope") is None
    assert platform.get_model("chat", "1") is None
    assert platform.get_endpoint("ep-nope") is None
    assert platform.get_deployment("ep-nope", "blue") is None
    assert platform.list_deployments("ep-nope") == []


def test_deleting_something_missing_is_a_no_op(any_adapter: Harness) -> None:
    platform = any_adapter.platform
    platform.begin_delete_endpoint("ep-nope")
    platform.begin_delete_deployment("ep-nope", "blue")
    any_adapter.endpoint()
    platform.begin_delete_deployment(ENDPOINT, "blue")
    assert platform.get_endpoint(ENDPOINT) is not None


def test_an_endpoint_being_deleted_is_deleted_once(any_adapter: Harness) -> None:
    """Until it is gone it lists as deleting (the local workspace deletes at once), and deleting
    it again meanwhile is a no-op: the idle sweep that lost the answer to its delete asks again.
    Creating it meanwhile is refused."""
    platform = any_adapter.platform
    any_adapter.endpoint()
    promptly(lambda: platform.begin_delete_endpoint(ENDPOINT))
    listed = [e.state for e in platform.list_endpoints() if e.name == ENDPOINT]
    assert listed in ([], [ProvisioningState.DELETING]), listed
    promptly(lambda: platform.begin_delete_endpoint(ENDPOINT))
    if listed:
        with pytest.raises(ConflictError):
            platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "contract"))
    any_adapter.settle()
    assert platform.get_endpoint(ENDPOINT) is None
    assert ENDPOINT not in [e.name for e in platform.list_endpoints()]


def test_unknown_jobs_and_endpoints_have_no_metrics(any_adapter: Harness) -> None:
    with pytest.raises(NotFoundError):
        any_adapter.platform.get_job_metrics("ftpilot-nope")
    with pytest.raises(NotFoundError):
        any_adapter.platform.endpoint_requests("ep-nope", 600)


def test_a_repeated_endpoint_create_leaves_the_first_and_returns_at_once(any_adapter: Harness) -> None:
    platform = any_adapter.platform
    promptly(lambda: platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "contract", {"team": "ml"})))
    promptly(lambda: platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "contract", {"team": "ml"})))
    any_adapter.settle()
    (endpoint,) = [e for e in platform.list_endpoints() if e.name == ENDPOINT]
    assert endpoint.state is ProvisioningState.SUCCEEDED
    assert endpoint.tags["team"] == "ml"
    assert platform.endpoint_requests(ENDPOINT, 600).within(600) == 0
    promptly(lambda: platform.begin_delete_endpoint(ENDPOINT))
    any_adapter.settle()
    assert platform.get_endpoint(ENDPOINT) is None


def test_canceling_a_job_that_does_not_exist_is_not_found(any_adapter: Harness) -> None:
    with pytest.raises(NotFoundError):
        any_adapter.platform.begin_cancel_job("ftpilot-nope")


def test_traffic_on_what_does_not_exist_is_not_found(any_adapter: Harness) -> None:
    platform = any_adapter.platform
    with pytest.raises(NotFoundError):
        platform.begin_set_traffic("ep-nope", {"blue": 100})
    any_adapter.endpoint()
    with pytest.raises(NotFoundError):
        platform.begin_set_traffic(ENDPOINT, {"purple": 100})


# --- adapters that can register and deploy a model here ------------------------------------------


def test_a_repeated_submission_returns_the_one_job(with_models: Harness) -> None:
    platform = with_models.platform
    request = finetune("ftpilot-job-1")
    first = platform.submit_finetune(request)
    again = platform.submit_finetune(request)
    assert (first.name, again.name) == ("ftpilot-job-1", "ftpilot-job-1")
    assert again.status is JobStatus.QUEUED


def test_canceling_stops_a_job_and_leaves_an_ended_one_alone(with_models: Harness) -> None:
    platform = with_models.platform
    request = finetune("ftpilot-job-1")
    platform.submit_finetune(request)
    promptly(lambda: platform.begin_cancel_job("ftpilot-job-1"))
    with_models.settle_jobs()
    assert platform.get_job("ftpilot-job-1").status is JobStatus.CANCELED
    with_models.completed_job("ftpilot-job-2")
    platform.begin_cancel_job("ftpilot-job-2")
    with_models.settle_jobs()
    assert platform.get_job("ftpilot-job-2").status is JobStatus.COMPLETED


def test_a_repeated_registration_returns_the_runs_version(with_models: Harness) -> None:
    platform = with_models.platform
    with_models.completed_job("ftpilot-job-1")
    first = platform.register_model(ModelRequest("chat", "run-1", "ftpilot-job-1", "contract"))
    assert platform.register_model(ModelRequest("chat", "run-1", "ftpilot-job-1", "contract")) == first
    with_models.completed_job("ftpilot-job-2")
    second = platform.register_model(ModelRequest("chat", "run-2", "ftpilot-job-2", "contract"))
    assert (first.version, second.version) == ("1", "2")
    assert platform.get_model("chat", "2") == second


def test_a_repeated_deployment_create_leaves_it_and_another_model_conflicts(with_models: Harness) -> None:
    platform = with_models.platform
    model_id = with_models.model_id()
    with_models.endpoint()
    request = DeploymentRequest(ENDPOINT, "blue", model_id, SIZE)
    promptly(lambda: platform.begin_create_deployment(request))
    promptly(lambda: platform.begin_create_deployment(request))
    other = with_models.model_id("run-2", "ftpilot-job-2")
    with pytest.raises(ConflictError):
        platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "blue", other, SIZE))
    with_models.settle()
    (deployment,) = platform.list_deployments(ENDPOINT)
    assert (deployment.name, deployment.state) == ("blue", ProvisioningState.SUCCEEDED)


def test_traffic_rules(with_models: Harness) -> None:
    platform = with_models.platform
    model_id = with_models.model_id()
    with_models.endpoint()
    for name in ("blue", "green"):
        platform.begin_create_deployment(DeploymentRequest(ENDPOINT, name, model_id, SIZE))
    with_models.settle()
    with pytest.raises(PlatformConfigError):
        platform.begin_set_traffic(ENDPOINT, {"blue": 60, "green": 30})
    promptly(lambda: platform.begin_set_traffic(ENDPOINT, {"blue": 100}))
    with_models.settle()
    with pytest.raises(ConflictError):
        platform.begin_delete_deployment(ENDPOINT, "blue")  # it takes all the traffic
    platform.begin_set_traffic(ENDPOINT, {"green": 100})
    with_models.settle()
    promptly(lambda: platform.begin_delete_deployment(ENDPOINT, "blue"))
    with_models.settle()
    assert [d.name for d in platform.list_deployments(ENDPOINT)] == ["green"]
    endpoint = platform.get_endpoint(ENDPOINT)
    assert endpoint is not None and dict(endpoint.traffic) == {"green": 100}


def test_a_deployment_being_deleted_is_deleted_once(with_models: Harness) -> None:
    """As an endpoint: it lists as deleting until it is gone, and deleting it again meanwhile is a no-op."""
    platform = with_models.platform
    model_id = with_models.model_id()
    with_models.endpoint()
    promptly(lambda: platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "blue", model_id, SIZE)))
    with_models.settle()
    promptly(lambda: platform.begin_delete_deployment(ENDPOINT, "blue"))
    assert [(d.name, d.state) for d in platform.list_deployments(ENDPOINT)] == [("blue", ProvisioningState.DELETING)]
    promptly(lambda: platform.begin_delete_deployment(ENDPOINT, "blue"))
    with_models.settle()
    assert platform.get_deployment(ENDPOINT, "blue") is None
    assert platform.list_deployments(ENDPOINT) == []


def test_tagging_a_model_adds_to_its_tags_and_a_missing_one_is_not_found(with_models: Harness) -> None:
    platform = with_models.platform
    with_models.completed_job("ftpilot-job-1")
    model = platform.register_model(ModelRequest("chat", "run-1", "ftpilot-job-1", "contract", {"kept": "yes"}))
    tagged = platform.tag_model("chat", model.version, {"ftpilot-gate": "not_promoted: worse"})
    assert tagged.version == model.version and tagged.id == model.id
    assert tagged.tags["ftpilot-gate"] == "not_promoted: worse" and tagged.tags["kept"] == "yes"
    assert platform.get_model("chat", model.version).tags["ftpilot-gate"] == "not_promoted: worse"
    with pytest.raises(NotFoundError):
        platform.tag_model("chat", "99", {"ftpilot-gate": "x"})


def test_opening_scoring_on_a_missing_endpoint_is_not_found(any_adapter: Harness) -> None:
    with pytest.raises(NotFoundError):
        any_adapter.platform.open_scoring("ep-missing")
