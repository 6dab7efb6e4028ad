"""The one port between ftpilot's domain code and an ML platform.

Two adapters implement it: Azure ML (``shared.platform.azureml``) and the local workspace.
Domain code sees only these types, never ``azure.ai.ml``. Long-running operations are
*started* by ``begin_*`` methods and *observed* through ``get_*`` (provisioning state), so
no function ever waits minutes for a deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

ParamValue = str | int | float


class PlatformError(Exception):
    """Base of every error an adapter raises on purpose; the message is for the operator."""


class PlatformConfigError(PlatformError):
    """A setting or workspace resource is wrong; the message names what to fix."""


class NotFoundError(PlatformError):
    """The named resource does not exist."""


class ConflictError(PlatformError):
    """The named resource exists and cannot be created again."""


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
    name: str
    version: str
    job_name: str
    description: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
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


@runtime_checkable
class MLPlatform(Protocol):
    """Everything ftpilot asks of the ML platform. Every create looks before it creates."""

    # Jobs
    def submit_finetune(self, request: FineTuneRequest) -> JobInfo:
        """Check compute and submit; return the existing job when ``request.job_name`` exists."""
        ...

    def get_job(self, name: str) -> JobInfo | None: ...

    def get_job_metrics(self, name: str) -> dict[str, float]:
        """Final metrics the job logged (train_loss, eval_loss, ...), by name."""
        ...

    # Models
    def register_model(self, request: ModelRequest) -> ModelInfo:
        """Register the job's ``trained_model`` output; return the existing version if present."""
        ...

    def get_model(self, name: str, version: str) -> ModelInfo | None: ...

    # Endpoints and deployments (long-running: begin, then observe)
    def get_endpoint(self, name: str) -> EndpointInfo | None: ...

    def list_endpoints(self) -> list[EndpointInfo]: ...

    def begin_create_endpoint(self, request: EndpointRequest) -> None: ...

    def get_deployment(self, endpoint_name: str, name: str) -> DeploymentInfo | None: ...

    def list_deployments(self, endpoint_name: str) -> list[DeploymentInfo]: ...

    def begin_create_deployment(self, request: DeploymentRequest) -> None: ...

    def begin_set_traffic(self, endpoint_name: str, traffic: Mapping[str, int]) -> None: ...

    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None: ...

    def begin_delete_endpoint(self, name: str) -> None: ...

    def invoke(self, endpoint_name: str, deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        """Call one deployment directly with a scoring payload; return its decoded JSON answer."""
        ...

    def endpoint_request_count(self, name: str, window_s: float) -> int:
        """Requests the endpoint served in the last ``window_s`` seconds (missing data counts as zero)."""
        ...
