"""Fakes of the Azure clients the Azure ML adapter uses, behaving like the service where it matters.

Azure is out of reach in tests, so these stand in for ``MLClient`` (workspace and registry) and
``MonitorManagementClient``. They return the SDK's real entities (``Model``, ``AmlCompute``,
``VmSize``, ``ManagedOnlineEndpoint``...), serve the real pipeline component loaded from its
registry spec, push submitted jobs through the SDK's own validation and REST round trip, raise the
service's exceptions (``ResourceNotFoundError``, ``ResourceExistsError`` on a taken job name), and
move endpoints and deployments through provisioning states only as later reads observe them.
Each client's ``recorder`` keeps every call, so tests can say what the adapter asked for.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from tests.paths import COMPONENT_SPEC

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-ftpilot"
WORKSPACE = "ws-ftpilot"
WORKSPACE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
    f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
BASE_MODEL = "Phi-3-mini-4k-instruct"
BASE_MODEL_VERSION = "15"
CLUSTER = "gpu-cluster-big"
CLUSTER_SIZE = "Standard_NC24ads_A100_v4"


@cache
def spec_component() -> Any:
    """chat_completion_pipeline as its registry spec declares it (loaded once: it takes a second)."""
    from azure.ai.ml import load_component

    return load_component(COMPONENT_SPEC)


@cache
def registry_component() -> Any:
    """The same component as the registry serves it: with its registry id, which jobs then refer to."""
    from azure.ai.ml import load_component

    component = load_component(COMPONENT_SPEC)
    component._id = f"azureml://registries/azureml/components/{component.name}/versions/{component.version}"
    return component


def not_found(what: str) -> ResourceNotFoundError:
    return ResourceNotFoundError(f"{what} not found")


Call = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass
class Recorder:
    """The calls made on every fake of one client, in order."""

    calls: list[Call] = field(default_factory=list)

    def record(self, operation: str, /, *args: Any, **kwargs: Any) -> None:
        self.calls.append((operation, args, kwargs))

    def named(self, operation: str) -> list[Call]:
        return [call for call in self.calls if call[0] == operation]


class FakePoller:
    """An LRO poller; remembers whether anyone waited on it (the adapter must not)."""

    def __init__(self, result: Any = None) -> None:
        self._result = result
        self.waited = False

    def result(self, timeout: float | None = None) -> Any:
        self.waited = True
        return self._result

    def wait(self, timeout: float | None = None) -> None:
        self.waited = True


class _Provisioning:
    """A resource whose provisioning state advances as reads observe it: Creating (or Updating), then ``outcome``."""

    def __init__(self, entity: Any, outcome: str, reads_in_progress: int, update: bool = False) -> None:
        self.entity = entity
        self.outcome = outcome
        self.reads_left = reads_in_progress
        self.in_progress = "Updating" if update else "Creating"

    def observe(self) -> str:
        if self.reads_left > 0:
            self.reads_left -= 1
            return self.in_progress
        return self.outcome


# Registry


class FakeRegistryModels:
    def __init__(self, recorder: Recorder, tags: dict[str, str]) -> None:
        self._recorder = recorder
        self.tags = tags
        self.names = {BASE_MODEL}

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        from azure.ai.ml.entities import Model

        self._recorder.record("registry.models.get", name, version=version, label=label)
        if name not in self.names:
            raise not_found(f"model {name}")
        return Model(
            name=name,
            version=BASE_MODEL_VERSION,
            id=f"azureml://registries/azureml/models/{name}/versions/{BASE_MODEL_VERSION}",
            tags=dict(self.tags),
        )


class FakeComponents:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.available = True

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self._recorder.record("registry.components.get", name=name, version=version, label=label)
        if not self.available or name != "chat_completion_pipeline":
            raise not_found(f"component {name}")
        return registry_component()


class FakeRegistryClient:
    """``MLClient(credential, registry_name="azureml")``."""

    def __init__(self, model_tags: dict[str, str] | None = None) -> None:
        self.recorder = Recorder()
        self.models = FakeRegistryModels(self.recorder, model_tags or {})
        self.components = FakeComponents(self.recorder)


# Workspace


class FakeCompute:
    def __init__(self, recorder: Recorder) -> None:
        from azure.ai.ml.entities import AmlCompute, VmSize

        self._recorder = recorder
        self.clusters = {CLUSTER: AmlCompute(name=CLUSTER, size=CLUSTER_SIZE, provisioning_state="Succeeded")}
        self.sizes = [
            VmSize(name="Standard_DS3_v2", gpus=0),
            VmSize(name=CLUSTER_SIZE, gpus=1),
            VmSize(name="Standard_ND96asr_v4", gpus=8),
            VmSize(name="Standard_NC6", gpus=1),
        ]

    def add(self, name: str, size: str, provisioning_state: str = "Succeeded") -> None:
        from azure.ai.ml.entities import AmlCompute

        self.clusters[name] = AmlCompute(name=name, size=size, provisioning_state=provisioning_state)

    def get(self, name: str) -> Any:
        self._recorder.record("compute.get", name)
        if name not in self.clusters:
            raise not_found(f"compute {name}")
        return self.clusters[name]

    def list_sizes(self, *, location: str | None = None, compute_type: str | None = None) -> list[Any]:
        self._recorder.record("compute.list_sizes")
        return list(self.sizes)


class FakeJobs:
    """Jobs as the service keeps them: REST objects, created once per name, read back as entities."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.rest: dict[str, Any] = {}
        self.submitted: list[Any] = []
        self.race_next_create = False

    def create_or_update(self, job: Any, *, experiment_name: str | None = None, **kwargs: Any) -> Any:
        self._recorder.record("jobs.create_or_update", job.name, experiment_name=experiment_name, **kwargs)
        if self.race_next_create:  # another worker's identical submission lands first
            self.race_next_create = False
            self._store(job, experiment_name)
        if job.name in self.rest:
            conflict = ResourceExistsError(f"job {job.name} already exists")
            conflict.status_code = 409
            raise conflict
        validation = job._validate()
        if not validation.passed:
            raise ValueError(f"job failed the SDK's validation: {validation.error_messages}")
        self.submitted.append(job)
        self._store(job, experiment_name)
        return self._entity(job.name)

    def _store(self, job: Any, experiment_name: str | None) -> None:
        """Keep the job as the service does: its REST body, as JSON, with the service's fields added."""
        body = json.loads(json.dumps(job._to_rest_object().as_dict()))
        body.update(name=job.name, id=f"{WORKSPACE_ID}/jobs/{job.name}")
        body["properties"].update(experimentName=experiment_name, status="NotStarted")
        self.rest[job.name] = body

    def get(self, name: str) -> Any:
        self._recorder.record("jobs.get", name)
        if name not in self.rest:
            raise not_found(f"job {name}")
        return self._entity(name)

    def _entity(self, name: str) -> Any:
        """The job as the SDK reads the service's answer."""
        from azure.ai.ml._restclient.arm_ml_service.models import JobBase
        from azure.ai.ml.entities import Job

        return Job._from_rest_object(JobBase(copy.deepcopy(self.rest[name])))

    def set_status(self, name: str, status: str) -> None:
        self.rest[name]["properties"]["status"] = status


class FakeWorkspaceModels:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.registered: dict[tuple[str, str], Any] = {}

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self._recorder.record("models.get", name, version)
        if (name, str(version)) not in self.registered:
            raise not_found(f"model {name}:{version}")
        return self.registered[(name, str(version))]

    def create_or_update(self, model: Any) -> Any:
        from azure.ai.ml.entities import Model

        self._recorder.record("models.create_or_update", model)
        model._to_rest_object()  # must serialise, as the real call does
        job_name = model.path.split("/")[3]  # azureml://jobs/<job>/outputs/trained_model
        stored = Model(
            name=model.name,
            version=model.version,
            id=f"{WORKSPACE_ID}/models/{model.name}/versions/{model.version}",
            type=model.type,
            path=model.path,
            description=model.description,
            tags=dict(model.tags or {}),
            job_name=job_name,
        )
        self.registered[(model.name, str(model.version))] = stored
        return stored


class FakeOnlineEndpoints:
    def __init__(self, recorder: Recorder, keys: dict[str, str]) -> None:
        self._recorder = recorder
        self._keys = keys
        self.items: dict[str, _Provisioning] = {}
        self.pollers: list[FakePoller] = []
        self.outcome = "Succeeded"
        self.reads_in_progress = 1
        self.scoring_uri = "https://ep.westeurope.inference.ml.azure.com/score"

    def begin_create_or_update(self, endpoint: Any, *, local: bool = False) -> FakePoller:
        self._recorder.record("online_endpoints.begin_create_or_update", endpoint)
        endpoint._to_rest_online_endpoint(location="westeurope")  # must serialise, as the real call does
        update = endpoint.name in self.items
        self.items[endpoint.name] = _Provisioning(copy.deepcopy(endpoint), self.outcome, self.reads_in_progress, update)
        self._keys.setdefault(endpoint.name, f"key-of-{endpoint.name}-0123456789")
        poller = FakePoller(endpoint)
        self.pollers.append(poller)
        return poller

    def get(self, name: str, *, local: bool = False) -> Any:
        self._recorder.record("online_endpoints.get", name)
        if name not in self.items:
            raise not_found(f"endpoint {name}")
        return self._view(self.items[name])

    def list(self, *, local: bool = False) -> Iterator[Any]:
        self._recorder.record("online_endpoints.list")
        return iter([self._view(item) for item in self.items.values()])

    def get_keys(self, name: str) -> Any:
        from azure.ai.ml.entities import EndpointAuthKeys

        self._recorder.record("online_endpoints.get_keys", name)
        if name not in self.items:
            raise not_found(f"endpoint {name}")
        return EndpointAuthKeys(primary_key=self._keys[name], secondary_key=self._keys[name][::-1])

    def begin_delete(self, name: str | None = None, *, local: bool = False) -> FakePoller:
        self._recorder.record("online_endpoints.begin_delete", name)
        if name not in self.items:
            raise not_found(f"endpoint {name}")
        del self.items[name]
        poller = FakePoller()
        self.pollers.append(poller)
        return poller

    def _view(self, item: _Provisioning) -> Any:
        """The endpoint as the service returns it: state, scoring URI and creation time filled in."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        sent = item.entity
        return ManagedOnlineEndpoint(
            name=sent.name,
            description=sent.description,
            tags=dict(sent.tags or {}),
            auth_mode=sent.auth_mode,
            traffic=dict(sent.traffic or {}),
            provisioning_state=item.observe(),
            scoring_uri=self.scoring_uri,
            properties={"createdAt": "2025-01-02T03:04:05.000000+0000"},
        )


class FakeOnlineDeployments:
    def __init__(self, recorder: Recorder, endpoints: FakeOnlineEndpoints) -> None:
        self._recorder = recorder
        self._endpoints = endpoints
        self.items: dict[tuple[str, str], _Provisioning] = {}
        self.pollers: list[FakePoller] = []
        self.outcome = "Succeeded"
        self.reads_in_progress = 1
        self.logs = "Traceback (most recent call last):\nRuntimeError: CUDA out of memory"

    def begin_create_or_update(self, deployment: Any, **kwargs: Any) -> FakePoller:
        self._recorder.record("online_deployments.begin_create_or_update", deployment)
        if deployment.endpoint_name not in self._endpoints.items:
            raise not_found(f"endpoint {deployment.endpoint_name}")
        deployment._to_rest_object(location="westeurope")  # must serialise, as the real call does
        key = (deployment.endpoint_name, deployment.name)
        self.items[key] = _Provisioning(
            copy.deepcopy(deployment), self.outcome, self.reads_in_progress, key in self.items
        )
        poller = FakePoller(deployment)
        self.pollers.append(poller)
        return poller

    def get(self, name: str, endpoint_name: str, *, local: bool = False) -> Any:
        self._recorder.record("online_deployments.get", name, endpoint_name)
        if (endpoint_name, name) not in self.items:
            raise not_found(f"deployment {endpoint_name}/{name}")
        return self._view(self.items[(endpoint_name, name)])

    def list(self, endpoint_name: str, *, local: bool = False) -> Iterator[Any]:
        self._recorder.record("online_deployments.list", endpoint_name)
        if endpoint_name not in self._endpoints.items:
            raise not_found(f"endpoint {endpoint_name}")
        return iter([self._view(item) for (ep, _), item in self.items.items() if ep == endpoint_name])

    def get_logs(self, name: str, endpoint_name: str, lines: int, **kwargs: Any) -> str:
        self._recorder.record("online_deployments.get_logs", name, endpoint_name, lines=lines)
        return "\n".join(self.logs.splitlines()[-lines:])

    def begin_delete(self, name: str, endpoint_name: str, *, local: bool = False) -> FakePoller:
        self._recorder.record("online_deployments.begin_delete", name, endpoint_name)
        if (endpoint_name, name) not in self.items:
            raise not_found(f"deployment {endpoint_name}/{name}")
        del self.items[(endpoint_name, name)]
        poller = FakePoller()
        self.pollers.append(poller)
        return poller

    def _view(self, item: _Provisioning) -> Any:
        """The deployment as the service returns it: the model as an id string, the current state."""
        from azure.ai.ml.entities import ManagedOnlineDeployment

        sent = item.entity
        return ManagedOnlineDeployment(
            name=sent.name,
            endpoint_name=sent.endpoint_name,
            model=sent.model,
            instance_type=sent.instance_type,
            instance_count=sent.instance_count,
            tags=dict(sent.tags or {}),
            provisioning_state=item.observe(),
        )


class FakeWorkspaces:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.mlflow_tracking_uri = (
            f"azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/{SUBSCRIPTION}/resourceGroups/"
            f"{RESOURCE_GROUP}/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
        )

    def get(self, name: str | None = None) -> Any:
        from azure.ai.ml.entities import Workspace

        self._recorder.record("workspaces.get", name)
        return Workspace(name=WORKSPACE, mlflow_tracking_uri=self.mlflow_tracking_uri)


class FakeMLClient:
    """``MLClient(credential, subscription_id, resource_group, workspace_name)``."""

    subscription_id = SUBSCRIPTION
    resource_group_name = RESOURCE_GROUP
    workspace_name = WORKSPACE

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.keys: dict[str, str] = {}
        self.compute = FakeCompute(self.recorder)
        self.jobs = FakeJobs(self.recorder)
        self.models = FakeWorkspaceModels(self.recorder)
        self.online_endpoints = FakeOnlineEndpoints(self.recorder, self.keys)
        self.online_deployments = FakeOnlineDeployments(self.recorder, self.online_endpoints)
        self.workspaces = FakeWorkspaces(self.recorder)


# Azure Monitor


class FakeMetrics:
    """``MonitorManagementClient.metrics``: answers with the SDK's real response models."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.points: list[float | None] = []
        self.missing: set[str] = set()

    def list(self, resource_uri: str, **kwargs: Any) -> Any:
        from azure.mgmt.monitor.models import (
            LocalizableStringAutoGenerated,
            Metric,
            MetricValue,
            Response,
            TimeSeriesElement,
        )

        self.calls.append((resource_uri, kwargs))
        if resource_uri.rsplit("/", 1)[-1] in self.missing:
            raise not_found(resource_uri)
        start = datetime(2025, 1, 1, tzinfo=UTC)
        data = [
            MetricValue(time_stamp=start + timedelta(minutes=minute), average=value)
            for minute, value in enumerate(self.points)
        ]
        metric = Metric(
            id=f"{resource_uri}/providers/Microsoft.Insights/metrics/RequestsPerMinute",
            type="Microsoft.Insights/metrics",
            name=LocalizableStringAutoGenerated(value="RequestsPerMinute"),
            unit="Count",
            timeseries=[TimeSeriesElement(data=data)],
        )
        return Response(timespan=kwargs.get("timespan", ""), value=[metric])


class FakeMonitorClient:
    def __init__(self) -> None:
        self.metrics = FakeMetrics()
