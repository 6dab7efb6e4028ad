"""An in-memory ML platform that behaves like the service where the tests need it.

Azure ML cannot exist here, so intake, rollout and cleanup tests run against this fake of
the port. It keeps state like the service does: job names are unique, endpoints and
deployments are long-running operations that stay ``creating`` for a few reads before they
succeed (or fail, when a test says so), creating an existing name is a conflict, traffic
must name existing deployments, deletes are idempotent. A deleted endpoint or deployment stays
``deleting`` for a few reads (listings included) before it is gone, and an endpoint meanwhile
refuses what the workspace emulator refuses of one: a create, a deployment, traffic, requests.
It stands in for the service only: the domain logic under test is all real.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from shared.naming import RUN_TAG
from shared.platform.port import (
    MINUTE_S,
    ConflictError,
    DeploymentInfo,
    DeploymentRequest,
    EndpointInfo,
    EndpointRequest,
    FineTuneRequest,
    JobInfo,
    JobStatus,
    ModelInfo,
    ModelRequest,
    NotFoundError,
    PlatformConfigError,
    PlatformError,
    ProvisioningState,
    RequestCounts,
)
from shared.runs import now, utcnow

READS_TO_PROVISION = 2


class WorkerKilled(BaseException):
    """Raised after an operation took effect, as if the worker died right then."""


@dataclass
class _Endpoint:
    info: EndpointInfo
    pending: int = READS_TO_PROVISION
    deployments: dict[str, DeploymentInfo] = field(default_factory=dict)
    pending_deployments: dict[str, int] = field(default_factory=dict)
    request_times: list[datetime] = field(default_factory=list)  # on the rollout's clock (``use_clock``)

    @property
    def requests(self) -> int:
        return len(self.request_times)


class FakePlatform:
    def __init__(self) -> None:
        self.jobs: dict[str, JobInfo] = {}
        self.requests: dict[str, FineTuneRequest] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.models: dict[tuple[str, str], ModelInfo] = {}
        self.endpoints: dict[str, _Endpoint] = {}
        self.calls: Counter[str] = Counter()
        self.creates = 0
        self.compute_error: str | None = None
        self.fail_deployments = False
        self.inference_allow_list: dict[str, list[str]] = {}  # base model -> sizes, as its registry tag says
        self.stuck_deployments = False
        self.undeletable: set[str] = set()
        # What every deployment answers, or a function of (deployment, conversation) giving it.
        self.answer: Any = {"output": "Tides come from the moon's pull."}
        self.kill_after: str | None = None  # method name: the worker "dies" after it takes effect, once
        self._lock = threading.RLock()

    def _called(self, method: str) -> None:
        self.calls[method] += 1
        if self.kill_after == method:
            self.kill_after = None
            raise WorkerKilled(method)

    # Jobs ---------------------------------------------------------------------------------
    def _create_job(self, request: FineTuneRequest) -> JobInfo:
        with self._lock:
            if request.job_name in self.jobs:
                raise ConflictError(f"job {request.job_name} already exists")
            self.creates += 1
            job = JobInfo(
                name=request.job_name,
                status=JobStatus.QUEUED,
                display_name=f"{request.base_model}-{request.dataset_label}",
                tags=dict(request.tags),
                parameters=dict(request.parameters),
            )
            self.jobs[job.name] = job
            self.requests[job.name] = request
            return job

    def submit_finetune(self, request: FineTuneRequest) -> JobInfo:
        if self.compute_error:
            raise PlatformConfigError(self.compute_error)
        existing = self.get_job(request.job_name)
        if existing is not None:
            return existing
        try:
            return self._create_job(request)
        except ConflictError:  # lost a race with another worker: theirs is ours
            return self.jobs[request.job_name]

    def get_job(self, name: str) -> JobInfo | None:
        job = self.jobs.get(name)
        self._called("get_job")
        return job

    def begin_cancel_job(self, name: str) -> None:
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                raise NotFoundError(f"job {name} does not exist")
            if not job.status.terminal:
                self.jobs[name] = replace(job, status=JobStatus.CANCELED)
        self._called("begin_cancel_job")

    def set_job(self, name: str, status: JobStatus, error: str | None = None) -> None:
        self.jobs[name] = replace(self.jobs[name], status=status, error=error)
        if status is JobStatus.COMPLETED:
            self.metrics[name] = {"train_loss": 1.5, "eval_loss": 1.75}

    def get_job_metrics(self, name: str) -> dict[str, float]:
        self._called("get_job_metrics")
        if name not in self.jobs:
            raise NotFoundError(f"job {name} does not exist")
        return dict(self.metrics.get(name, {}))

    # Models -------------------------------------------------------------------------------
    def register_model(self, request: ModelRequest) -> ModelInfo:
        """As the workspace numbers versions: the run's version if tagged, else the next integer."""
        with self._lock:
            versions = [m for (name, _), m in self.models.items() if name == request.name]
            mine = [m for m in versions if m.tags.get(RUN_TAG) == request.run_id]
            if mine:
                model = mine[0]
            else:
                job = self.jobs.get(request.job_name)
                if job is None or job.status is not JobStatus.COMPLETED:
                    raise NotFoundError(f"job {request.job_name} has no trained_model output")
                version = str(max((int(m.version) for m in versions), default=0) + 1)
                tags = {**request.tags, RUN_TAG: request.run_id}
                model = ModelInfo(request.name, version, f"azureml:{request.name}:{version}", tags)
                self.models[(request.name, version)] = model
        self._called("register_model")
        return model

    def get_model(self, name: str, version: str) -> ModelInfo | None:
        return self.models.get((name, version))

    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> ModelInfo:
        with self._lock:
            model = self.models.get((name, version))
            if model is None:
                raise NotFoundError(f"model {name}:{version} is not registered")
            self.models[(name, version)] = model = replace(model, tags={**model.tags, **tags})
            return model

    # Endpoints ----------------------------------------------------------------------------
    def get_endpoint(self, name: str) -> EndpointInfo | None:
        with self._lock:
            info = self._observe(name)
        self._called("get_endpoint")
        return info

    def _observe(self, name: str) -> EndpointInfo | None:
        """A read of the endpoint, which moves its operation on: created, or deleted, after a few reads."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return None
        if endpoint.pending > 0:
            endpoint.pending -= 1
            if endpoint.pending == 0 and endpoint.info.state is ProvisioningState.DELETING:
                del self.endpoints[name]
                return None
            if endpoint.pending == 0:
                endpoint.info = replace(endpoint.info, state=ProvisioningState.SUCCEEDED)
        return endpoint.info

    def list_endpoints(self) -> list[EndpointInfo]:
        with self._lock:
            listed = [self._observe(name) for name in list(self.endpoints)]
        return [info for info in listed if info is not None]

    def begin_create_endpoint(self, request: EndpointRequest) -> None:
        with self._lock:
            existing = self.endpoints.get(request.name)
            if existing is not None and existing.info.state is ProvisioningState.DELETING:
                raise ConflictError(f"endpoint {request.name} is being deleted")
            if existing is not None and existing.info.state is not ProvisioningState.FAILED:
                self._called("begin_create_endpoint")
                return  # left alone, as the service's adapters do
            self.endpoints[request.name] = _Endpoint(
                EndpointInfo(
                    request.name,
                    ProvisioningState.CREATING,
                    f"https://{request.name}.fake/score",
                    {},
                    dict(request.tags),
                    now(),
                )
            )
        self._called("begin_create_endpoint")

    def begin_delete_endpoint(self, name: str) -> None:
        if name in self.undeletable:
            raise PlatformError(f"endpoint {name}: delete rejected (409 Conflict: an operation is in progress)")
        with self._lock:
            endpoint = self.endpoints.get(name)
            if endpoint is not None and endpoint.info.state is not ProvisioningState.DELETING:
                endpoint.info = replace(endpoint.info, state=ProvisioningState.DELETING)
                endpoint.pending = READS_TO_PROVISION
        self._called("begin_delete_endpoint")

    def deleting(self) -> set[str]:
        """The endpoints being deleted: no longer billing, not yet gone."""
        return {name for name, e in self.endpoints.items() if e.info.state is ProvisioningState.DELETING}

    def standing(self) -> set[str]:
        """The endpoints that exist and are not being deleted."""
        return set(self.endpoints) - self.deleting()

    def begin_set_traffic(self, endpoint_name: str, traffic: Mapping[str, int]) -> None:
        with self._lock:
            endpoint = self._endpoint(endpoint_name, changing=True)
            unknown = set(traffic) - set(endpoint.deployments)
            if unknown:
                raise NotFoundError(f"endpoint {endpoint_name} has no deployment {', '.join(sorted(unknown))}")
            if sum(traffic.values()) not in (0, 100):
                raise PlatformConfigError(f"traffic {dict(traffic)} adds up to {sum(traffic.values())}, not 100")
            endpoint.info = replace(endpoint.info, traffic=dict(traffic), state=ProvisioningState.UPDATING)
            endpoint.pending = READS_TO_PROVISION
        self._called("begin_set_traffic")

    def _endpoint(self, name: str, *, changing: bool = False) -> _Endpoint:
        """The endpoint; ``changing``: for a change or a call, which one being deleted refuses."""
        if name not in self.endpoints:
            raise NotFoundError(f"endpoint {name} does not exist")
        endpoint = self.endpoints[name]
        if changing and endpoint.info.state is ProvisioningState.DELETING:
            raise ConflictError(f"endpoint {name} is being deleted")
        return endpoint

    # Deployments --------------------------------------------------------------------------
    def begin_create_deployment(self, request: DeploymentRequest) -> None:
        allowed = self.inference_allow_list.get(request.base_model or "")
        if allowed is not None and request.instance_type not in allowed:
            raise PlatformConfigError(f"instance type {request.instance_type} cannot serve {request.base_model}")
        with self._lock:
            endpoint = self._endpoint(request.endpoint_name, changing=True)
            existing = endpoint.deployments.get(request.name)
            if existing is not None:
                if existing.model_id != request.model_id:
                    raise ConflictError(f"deployment {request.name} already serves model {existing.model_id}")
                if existing.state is not ProvisioningState.FAILED:
                    self._called("begin_create_deployment")
                    return
            endpoint.deployments[request.name] = DeploymentInfo(
                request.endpoint_name,
                request.name,
                ProvisioningState.CREATING,
                request.model_id,
                created_at=now(),
            )
            endpoint.pending_deployments[request.name] = READS_TO_PROVISION
        self._called("begin_create_deployment")

    def get_deployment(self, endpoint_name: str, name: str) -> DeploymentInfo | None:
        with self._lock:
            endpoint = self.endpoints.get(endpoint_name)
            info = None if endpoint is None else self._observe_deployment(endpoint, name)
        self._called("get_deployment")
        return info

    def _observe_deployment(self, endpoint: _Endpoint, name: str) -> DeploymentInfo | None:
        """A read of the deployment, which moves its operation on: created, or deleted, after a few reads."""
        if name not in endpoint.deployments:
            return None
        deployment = endpoint.deployments[name]
        if deployment.state is ProvisioningState.DELETING:
            endpoint.pending_deployments[name] -= 1
            if endpoint.pending_deployments[name] <= 0:
                del endpoint.deployments[name]
                del endpoint.pending_deployments[name]
                return None
        elif endpoint.pending_deployments.get(name, 0) > 0 and not self.stuck_deployments:
            endpoint.pending_deployments[name] -= 1
            if endpoint.pending_deployments[name] == 0:
                final = ProvisioningState.FAILED if self.fail_deployments else ProvisioningState.SUCCEEDED
                error = "OutOfQuota: not enough quota for Standard_NC6s_v3" if self.fail_deployments else None
                endpoint.deployments[name] = replace(deployment, state=final, error=error)
        return endpoint.deployments[name]

    def list_deployments(self, endpoint_name: str) -> list[DeploymentInfo]:
        with self._lock:
            endpoint = self.endpoints.get(endpoint_name)
            if endpoint is None:
                return []
            listed = [self._observe_deployment(endpoint, name) for name in list(endpoint.deployments)]
        return [info for info in listed if info is not None]

    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        with self._lock:
            endpoint = self.endpoints.get(endpoint_name)
            if endpoint is not None:
                if endpoint.info.traffic.get(name):
                    raise ConflictError(f"deployment {name} still takes traffic")
                deployment = endpoint.deployments.get(name)
                if deployment is not None and deployment.state is not ProvisioningState.DELETING:
                    endpoint.deployments[name] = replace(deployment, state=ProvisioningState.DELETING)
                    endpoint.pending_deployments[name] = READS_TO_PROVISION
                endpoint.info = replace(
                    endpoint.info, traffic={k: v for k, v in endpoint.info.traffic.items() if k != name}
                )
        self._called("begin_delete_deployment")

    def invoke(self, endpoint_name: str, deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        with self._lock:
            endpoint = self._endpoint(endpoint_name, changing=True)
            deployment = endpoint.deployments.get(deployment_name)
            if deployment is None or deployment.state is not ProvisioningState.SUCCEEDED:
                raise PlatformError(f"deployment {deployment_name} cannot take requests")
            conversations = payload["input_data"]["input_string"]
            assert conversations and conversations[0][-1]["role"] == "user"
            endpoint.request_times.append(utcnow())
        self._called("invoke")
        answer = self.answer(deployment_name, conversations[0]) if callable(self.answer) else self.answer
        if isinstance(answer, Exception):
            raise answer
        return answer

    def open_scoring(self, endpoint_name: str) -> Callable[[str, Mapping[str, Any], float], Any]:
        with self._lock:
            self._endpoint(endpoint_name)
        self._called("open_scoring")
        return lambda deployment, payload, timeout_s: self.invoke(endpoint_name, deployment, payload, timeout_s)

    def endpoint_requests(self, name: str, window_s: float) -> RequestCounts:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise NotFoundError(f"endpoint {name} does not exist")
        end = utcnow()
        since = end - timedelta(seconds=window_s)  # Azure Monitor's points are of the window only
        per_minute = Counter(int(at.timestamp() // MINUTE_S) for at in endpoint.request_times if at > since)
        return RequestCounts(as_of=end.timestamp(), window_s=window_s, per_minute=per_minute)

    # What a test sets up and asserts on ---------------------------------------------------
    def add_endpoint(self, name: str, *, tags: Mapping[str, str], created_at: str, requests: int = 0) -> None:
        info = EndpointInfo(name, ProvisioningState.SUCCEEDED, f"https://{name}.fake/score", {}, dict(tags), created_at)
        self.endpoints[name] = _Endpoint(info, pending=0, request_times=[utcnow()] * requests)

    def set_requests(self, endpoint: str, count: int) -> None:
        """The endpoint served ``count`` requests just now, and no others."""
        self.endpoints[endpoint].request_times = [utcnow()] * count

    def live_deployments(self) -> list[tuple[str, str]]:
        return [(e, d) for e, ep in self.endpoints.items() for d in ep.deployments]
