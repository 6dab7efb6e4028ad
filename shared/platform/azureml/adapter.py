"""``AzureMLPlatform``: the port on Azure Machine Learning, as the foundation-models walkthrough does it.

The adapter holds its clients and hands each call to the module that knows the subject (submit,
models, endpoints, scoring, metrics, monitor). Clients are built on first use, not in the constructor:
``import azure.ai.ml`` alone takes seconds and the registry client resolves its registry over the
network, which a function that only reads a job's status should not pay for. Tests inject the real
clients wired to a workspace emulator instead (``tests/azure_wire``).

Every port method runs under ``_translated``: whatever the SDKs raise leaves as the port's error
kinds (``shared.platform.azureml.service.translate``), so domain code never sees an SDK exception.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shared.config import Settings
from shared.platform.azureml import clients, compute, endpoints, models, monitor, scoring, service, submit
from shared.platform.azureml.metrics import JobMetricsReader, MlflowRestMetricsReader
from shared.platform.port import (
    DeploymentInfo,
    DeploymentRequest,
    EndpointInfo,
    EndpointRequest,
    FineTuneRequest,
    JobInfo,
    ModelInfo,
    ModelRequest,
    PlatformConfigError,
    RequestCounts,
    Scorer,
)

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential
    from azure.mgmt.monitor import MonitorManagementClient

F = TypeVar("F", bound=Callable[..., Any])


def _translated(method: F) -> F:
    """Run a port method with the SDKs' exceptions turned into the port's (the SDK error kept as the cause)."""

    @functools.wraps(method)
    def wrapper(self: AzureMLPlatform, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            what = f"{method.__name__.replace('_', ' ')} {_subject(args)}".strip()
            translated = service.translate(error, what)
            if translated is None or translated is error:
                raise
            raise translated from error

    return wrapper  # type: ignore[return-value]


def _subject(args: tuple[Any, ...]) -> str:
    """What a call is about, for its error message: a name, or the request's name."""
    if not args:
        return ""
    first = args[0]
    return first if isinstance(first, str) else str(getattr(first, "name", None) or getattr(first, "job_name", ""))


class AzureMLPlatform:
    """Jobs, models and managed online endpoints in one Azure ML workspace (``MLPlatform``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        ml_client: MLClient | None = None,
        registry_client: MLClient | None = None,
        credential: TokenCredential | None = None,
        metrics_reader: JobMetricsReader | None = None,
        monitor_client: MonitorManagementClient | None = None,
    ) -> None:
        self.settings = settings
        self._quieted = False
        self._ml_client = ml_client
        self._registry_client = registry_client
        self._credential = credential
        self._metrics_reader = metrics_reader
        self._monitor_client = monitor_client

    # Clients, built on first use

    @property
    def credential(self) -> TokenCredential:
        if self._credential is None:
            self._credential = clients.default_credential()
        return self._credential

    @property
    def ml_client(self) -> MLClient:
        if self._ml_client is None:
            clients.check_workspace_settings(self.settings)  # before a credential is built for nothing
            self._ml_client = clients.workspace_client(self.settings, self.credential)
        self._quiet()
        return self._ml_client

    @property
    def registry_client(self) -> MLClient:
        if self._registry_client is None:
            self._registry_client = clients.registry_client(self.settings, self.credential)
        self._quiet()
        return self._registry_client

    def _quiet(self) -> None:
        """Once the SDK is loaded (never at import time: it costs seconds), keep its pollers off stdout."""
        if not self._quieted:
            clients.quiet_pollers()
            self._quieted = True

    @property
    def metrics_reader(self) -> JobMetricsReader:
        if self._metrics_reader is None:
            workspace = self.ml_client.workspaces.get(self.ml_client.workspace_name)
            if not workspace.mlflow_tracking_uri:
                raise PlatformConfigError(f"workspace {workspace.name} reports no MLflow tracking URI")
            self._metrics_reader = MlflowRestMetricsReader(workspace.mlflow_tracking_uri, self.credential)
        return self._metrics_reader

    @property
    def monitor_client(self) -> MonitorManagementClient:
        if self._monitor_client is None:
            self._monitor_client = clients.monitor_client(self.credential, self.ml_client.subscription_id)
        return self._monitor_client

    # Jobs

    @_translated
    def submit_finetune(self, request: FineTuneRequest) -> JobInfo:
        return submit.submit_finetune(self.ml_client, self.registry_client, self.settings, request)

    @_translated
    def get_job(self, name: str) -> JobInfo | None:
        job = submit.find_job(self.ml_client, name)
        return None if job is None else submit.job_info(job)

    @_translated
    def begin_cancel_job(self, name: str) -> None:
        submit.begin_cancel_job(self.ml_client, name)

    @_translated
    def get_job_metrics(self, name: str) -> dict[str, float]:
        return self.metrics_reader.final_metrics(name)

    # Models

    @_translated
    def register_model(self, request: ModelRequest) -> ModelInfo:
        return models.register_model(self.ml_client, request)

    @_translated
    def get_model(self, name: str, version: str) -> ModelInfo | None:
        model = models.find_model(self.ml_client, name, version)
        return None if model is None else models.model_info(model)

    @_translated
    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> ModelInfo:
        return models.tag_model(self.ml_client, name, version, tags)

    # Endpoints and deployments

    @_translated
    def get_endpoint(self, name: str) -> EndpointInfo | None:
        return endpoints.get_endpoint(self.ml_client, name)

    @_translated
    def list_endpoints(self) -> list[EndpointInfo]:
        return endpoints.list_endpoints(self.ml_client)

    @_translated
    def begin_create_endpoint(self, request: EndpointRequest) -> None:
        endpoints.begin_create_endpoint(self.ml_client, request)

    @_translated
    def get_deployment(self, endpoint_name: str, name: str) -> DeploymentInfo | None:
        return endpoints.get_deployment(self.ml_client, endpoint_name, name)

    @_translated
    def list_deployments(self, endpoint_name: str) -> list[DeploymentInfo]:
        return endpoints.list_deployments(self.ml_client, endpoint_name)

    @_translated
    def begin_create_deployment(self, request: DeploymentRequest) -> None:
        if request.base_model:
            base = submit.foundation_model(self.registry_client, self.settings, request.base_model)
            compute.check_inference_size(request.instance_type, request.base_model, base.tags or {})
        endpoints.begin_create_deployment(self.ml_client, request)

    @_translated
    def begin_set_traffic(self, endpoint_name: str, traffic: Mapping[str, int]) -> None:
        endpoints.begin_set_traffic(self.ml_client, endpoint_name, traffic)

    @_translated
    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        endpoints.begin_delete_deployment(self.ml_client, endpoint_name, name)

    @_translated
    def begin_delete_endpoint(self, name: str) -> None:
        endpoints.begin_delete_endpoint(self.ml_client, name)

    @_translated
    def invoke(self, endpoint_name: str, deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        return scoring.invoke(self.ml_client, endpoint_name, deployment_name, payload, timeout_s)

    @_translated
    def open_scoring(self, endpoint_name: str) -> Scorer:
        return scoring.open_scoring(self.ml_client, endpoint_name)  # its calls raise the port's errors

    @_translated
    def endpoint_requests(self, name: str, window_s: float) -> RequestCounts:
        ml_client = self.ml_client
        resource_id = monitor.endpoint_resource_id(
            ml_client.subscription_id, ml_client.resource_group_name, ml_client.workspace_name, name
        )
        return monitor.request_counts(self.monitor_client, resource_id, window_s)
