"""The one port between ftpilot's domain code and an ML platform.

Two adapters implement it: Azure ML (``shared.platform.azureml``) and the local workspace.
Domain code sees only these types, never ``azure.ai.ml``. Long-running operations are
*started* by ``begin_*`` methods and *observed* through ``get_*`` (provisioning state), so
no function ever waits minutes for a deployment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

ParamValue = str | int | float


class PlatformError(Exception):
    """Base of every error an adapter raises; the message is for the operator.

    Adapters translate their SDK's exceptions into these four kinds (and this base for the rest),
    so domain code decides by kind, never by an SDK type: stop at once (``PlatformConfigError``),
    treat as absent (``NotFoundError``), look again (``ConflictError``) or retry later
    (``TransientError``).
    """


class PlatformConfigError(PlatformError):
    """A user error: a setting, a permission or a workspace resource is wrong; the message names what to fix.

    Retrying cannot help (HTTP 400/401/403/422, a missing registry asset, quota, an unknown size).
    """


class NotFoundError(PlatformError):
    """The named resource does not exist."""


class ConflictError(PlatformError):
    """The named resource exists in a way that refuses this change (taken, or busy with another change)."""


class TransientError(PlatformError):
    """The platform could not answer now (HTTP 429 or 5xx, a timeout, a dropped connection): retry later.

    ``retry_after_s`` is the service's own ``Retry-After`` when it sent one.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)


class ProvisioningState(StrEnum):
    CREATING = "creating"
    UPDATING = "updating"
    DELETING = "deleting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (ProvisioningState.SUCCEEDED, ProvisioningState.FAILED, ProvisioningState.CANCELED)


@dataclass(frozen=True)
class DataRef:
    """A file in ftpilot's storage account (container + blob path)."""

    container: str
    path: str


@dataclass(frozen=True)
class FineTuneRequest:
    """What intake asks for; the adapter resolves model defaults and compute itself."""

    job_name: str
    base_model: str
    train: DataRef
    test: DataRef
    dataset_label: str
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobInfo:
    name: str
    status: JobStatus
    display_name: str | None = None
    error: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    studio_url: str | None = None


@dataclass(frozen=True)
class ModelRequest:
    """Register ``job_name``'s trained model under ``name``, once per ``run_id``.

    The platform chooses the version (workspace model versions are positive integers, numbered by
    the registry); the run id, kept as the version's ``ftpilot-run`` tag, is what makes a repeated
    registration find the version it made before instead of adding another.
    """

    name: str
    run_id: str
    job_name: str
    description: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str  # as the platform numbers it: "1", "2", ...
    id: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointRequest:
    name: str
    description: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    state: ProvisioningState
    scoring_uri: str | None = None
    traffic: Mapping[str, int] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    created_at: str | None = None


@dataclass(frozen=True)
class DeploymentRequest:
    endpoint_name: str
    name: str
    model_id: str
    instance_type: str
    instance_count: int = 1
    tags: Mapping[str, str] = field(default_factory=dict)
    # The foundation model it was fine-tuned from: its inference_compute_allow_list tag, when
    # present, says which VM sizes can serve it.
    base_model: str | None = None


@dataclass(frozen=True)
class DeploymentInfo:
    endpoint_name: str
    name: str
    state: ProvisioningState
    model_id: str | None = None
    error: str | None = None
    created_at: str | None = None  # ISO 8601, as the platform reports it


MINUTE_S = 60


@dataclass(frozen=True)
class RequestCounts:
    """The requests an endpoint served, per minute, as Azure Monitor's ``RequestsPerMinute`` counts them.

    One query covers the longest window a caller needs and ``within`` answers any shorter one
    from it, so the idle sweep asks the metrics service once per endpoint, not once per window.
    A window counts every minute it overlaps: up to a minute more than the exact window, never
    less, so an endpoint is never judged idler than it was.
    """

    as_of: float  # epoch seconds the counts run up to
    window_s: float  # how far back they go
    per_minute: Mapping[int, float] = field(default_factory=dict)  # minute (epoch s // 60) -> requests; none: 0

    def within(self, window_s: float) -> int:
        """Requests in the last ``window_s`` seconds; ValueError for a window the counts do not cover."""
        if window_s > self.window_s:
            raise ValueError(f"requests over {window_s} s asked of counts that cover {self.window_s} s")
        first = math.floor((self.as_of - window_s) / MINUTE_S)
        return round(sum(count for minute, count in self.per_minute.items() if minute >= first))


class Scorer(Protocol):
    """Calls one endpoint's deployments (``MLPlatform.open_scoring``)."""

    def __call__(self, deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any: ...


@runtime_checkable
class MLPlatform(Protocol):
    """Everything ftpilot asks of the ML platform. Every create looks before it creates.

    One meaning on every adapter (``tests/test_port_contract.py`` holds them all to it): a repeated
    create returns or leaves what exists, a get of something missing is None, deleting something
    missing is a no-op, and ``begin_*`` starts a change and returns without waiting for it. Every
    method may raise ``TransientError`` (retry later) and ``PlatformConfigError`` (a setting or
    permission to fix); the other errors each method can raise are named in its docstring.
    """

    # Jobs
    def submit_finetune(self, request: FineTuneRequest) -> JobInfo:
        """Check model, compute and parameters, then submit; the existing job when ``request.job_name`` exists.

        PlatformConfigError when a check fails (nothing is submitted then).
        """
        ...

    def get_job(self, name: str) -> JobInfo | None:
        """The job's status, or None when there is no such job."""
        ...

    def begin_cancel_job(self, name: str) -> None:
        """Start canceling the job (it stops billing once canceled); a no-op for a job that has ended.

        NotFoundError when there is no such job.
        """
        ...

    def get_job_metrics(self, name: str) -> dict[str, float]:
        """Final metrics the job logged (train_loss, eval_loss, ...), by name. NotFoundError for an unknown job."""
        ...

    # Models
    def register_model(self, request: ModelRequest) -> ModelInfo:
        """Register the job's ``trained_model`` output once per ``request.run_id``; the run's version if present.

        NotFoundError when the job has no trained model; ConflictError when the run's version holds
        another job's model.
        """
        ...

    def get_model(self, name: str, version: str) -> ModelInfo | None:
        """The model version, or None."""
        ...

    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> ModelInfo:
        """Add or replace ``tags`` on a registered version (a verdict, say); NotFoundError when it does not exist."""
        ...

    # Endpoints and deployments (long-running: begin, then observe)
    def get_endpoint(self, name: str) -> EndpointInfo | None:
        """The endpoint with its provisioning state and traffic, or None."""
        ...

    def list_endpoints(self) -> list[EndpointInfo]: ...

    def begin_create_endpoint(self, request: EndpointRequest) -> None:
        """Start creating a key-auth endpoint; an existing one that has not failed is left alone.

        ConflictError while the endpoint is being deleted.
        """
        ...

    def get_deployment(self, endpoint_name: str, name: str) -> DeploymentInfo | None:
        """The deployment with its provisioning state, or None (also when the endpoint is gone)."""
        ...

    def list_deployments(self, endpoint_name: str) -> list[DeploymentInfo]:
        """The endpoint's deployments; none when the endpoint is gone."""
        ...

    def begin_create_deployment(self, request: DeploymentRequest) -> None:
        """Start deploying; an existing deployment of the same model that has not failed is left alone.

        NotFoundError when the endpoint does not exist; ConflictError when the deployment serves
        another model; PlatformConfigError when the instance type cannot serve the base model.
        """
        ...

    def begin_set_traffic(self, endpoint_name: str, traffic: Mapping[str, int]) -> None:
        """Start moving the endpoint's traffic to ``traffic`` (deployment -> percent, adding up to 100).

        NotFoundError when the endpoint, or a deployment ``traffic`` names, does not exist;
        PlatformConfigError when the weights are not whole percentages adding up to 100 (or all 0).
        """
        ...

    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        """Start deleting the deployment; a no-op when it is gone or being deleted.

        Until it is gone, the deployment is listed and read as ``DELETING``.

        ConflictError while it still takes traffic: move the traffic first.
        """
        ...

    def begin_delete_endpoint(self, name: str) -> None:
        """Start deleting the endpoint and its deployments; a no-op when it is gone or being deleted.

        Until it is gone, the endpoint is listed and read as ``DELETING``.
        """
        ...

    def invoke(self, endpoint_name: str, deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        """Call one deployment directly with a scoring payload; return its decoded JSON answer.

        NotFoundError when the endpoint does not exist; PlatformError when the deployment answers
        with an error (TransientError for a timeout, 429 or 5xx).
        """
        ...

    def open_scoring(self, endpoint_name: str) -> Scorer:
        """A caller for many requests to the endpoint's deployments (a promotion gate's): the scoring URI
        and key are fetched once and held only by the returned object. Each call answers as ``invoke``.

        NotFoundError when the endpoint does not exist.
        """
        ...

    def endpoint_requests(self, name: str, window_s: float) -> RequestCounts:
        """The requests the endpoint served per minute over the last ``window_s`` seconds, in one query.

        NotFoundError when the endpoint does not exist.
        """
        ...
