"""``LocalPlatform``: the ML-platform port on this machine, every step really happening here.

The second adapter of ``shared.platform.port`` beside Azure ML, for laptops and CI: fine-tuning
runs as a local training process, models go to a local MLflow registry, endpoints are local HTTP
servers, and run events land in an outbox the local host delivers to the event function. All state
is under ``settings.data_dir``, so any number of ``LocalPlatform`` objects, in any processes, see
the same workspace.

Importing this module is cheap (no torch, trl, peft or MLflow): the Functions handlers import the
adapter. Training, serving and routing import their libraries in their own processes; MLflow is
imported in this process only by the calls that need it (register, get_model, job metrics).

Beyond the port, the local host uses:

* ``recover()`` at start-up: restart routers and deployment servers that should be running, fail
  jobs whose training process died, start queued jobs.
* ``tick()`` periodically: the same for jobs (a finished trainer starts the next job itself, so
  this only matters after a crash).
* ``shutdown()`` on Ctrl-C: stop every child process, leaving the state for ``recover()``; a job
  that was training goes back to the queue and starts over then.
* ``get_endpoint_key(name)`` and ``events.drain_events(data_dir)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.config import Settings
from shared.platform.local import tracking
from shared.platform.local.endpoints import Endpoints
from shared.platform.local.jobs import Jobs
from shared.platform.local.layout import Layout
from shared.platform.local.registry import Registry
from shared.platform.local.store import Store
from shared.platform.port import (
    DeploymentInfo,
    DeploymentRequest,
    EndpointInfo,
    EndpointRequest,
    FineTuneRequest,
    JobInfo,
    ModelInfo,
    ModelRequest,
    NotFoundError,
    RequestCounts,
    Scorer,
)


class LocalPlatform:
    """The local workspace rooted at ``settings.data_dir``."""

    def __init__(self, settings: Settings) -> None:
        # Children run elsewhere (their own working directory), so the root must be absolute.
        self.settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
        self.layout = Layout(self.settings.data_dir)
        self.layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.layout.root.chmod(0o700)  # ports, logs, models and keys: nobody else's business
        store = Store(self.layout.state_db)
        self.jobs = Jobs(self.settings, store)
        self.registry = Registry(self.layout, store)
        self.endpoints = Endpoints(self.settings, store)

    # --- Jobs ------------------------------------------------------------------------------

    def submit_finetune(self, request: FineTuneRequest) -> JobInfo:
        return self.jobs.submit(request)

    def get_job(self, name: str) -> JobInfo | None:
        return self.jobs.get(name)

    def get_job_metrics(self, name: str) -> dict[str, float]:
        """The last value of each metric the job's MLflow run logged (empty before training started)."""
        job = self.jobs.record(name)
        if job is None:
            raise NotFoundError(f"job {name} does not exist")
        return tracking.final_metrics(self.layout, job.mlflow_run_id) if job.mlflow_run_id else {}

    def begin_cancel_job(self, name: str) -> None:
        self.jobs.cancel(name)

    # --- Models ----------------------------------------------------------------------------

    def register_model(self, request: ModelRequest) -> ModelInfo:
        return self.registry.register(request, self.jobs.record(request.job_name))

    def get_model(self, name: str, version: str) -> ModelInfo | None:
        return self.registry.get(name, version)

    def tag_model(self, name: str, version: str, tags: Mapping[str, str]) -> ModelInfo:
        return self.registry.tag(name, version, tags)

    # --- Endpoints and deployments ---------------------------------------------------------

    def get_endpoint(self, name: str) -> EndpointInfo | None:
        return self.endpoints.get_endpoint(name)

    def list_endpoints(self) -> list[EndpointInfo]:
        return self.endpoints.list_endpoints()

    def begin_create_endpoint(self, request: EndpointRequest) -> None:
        self.endpoints.begin_create_endpoint(request)

    def get_deployment(self, endpoint_name: str, name: str) -> DeploymentInfo | None:
        return self.endpoints.get_deployment(endpoint_name, name)

    def list_deployments(self, endpoint_name: str) -> list[DeploymentInfo]:
        return self.endpoints.list_deployments(endpoint_name)

    def begin_create_deployment(self, request: DeploymentRequest) -> None:
        self.endpoints.begin_create_deployment(request)

    def begin_set_traffic(self, endpoint_name: str, traffic: Mapping[str, int]) -> None:
        self.endpoints.begin_set_traffic(endpoint_name, traffic)

    def begin_delete_deployment(self, endpoint_name: str, name: str) -> None:
        self.endpoints.begin_delete_deployment(endpoint_name, name)

    def begin_delete_endpoint(self, name: str) -> None:
        self.endpoints.begin_delete_endpoint(name)

    def invoke(self, endpoint_name: str, deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        return self.endpoints.open_scoring(endpoint_name)(deployment_name, payload, timeout_s)

    def open_scoring(self, endpoint_name: str) -> Scorer:
        return self.endpoints.open_scoring(endpoint_name)

    def endpoint_requests(self, name: str, window_s: float) -> RequestCounts:
        return self.endpoints.requests(name, window_s)

    def get_endpoint_key(self, name: str) -> str:
        """The endpoint's key, for callers that invoke it themselves (never log it)."""
        return self.endpoints.key(name)

    # --- Life cycle ------------------------------------------------------------------------

    def tick(self) -> None:
        """Fail jobs whose trainer died; start the next queued job if none is running."""
        self.jobs.tick()

    def recover(self) -> None:
        """Bring back what should be running: routers, deployment servers, queued jobs."""
        self.endpoints.recover()
        self.jobs.tick()

    def shutdown(self) -> None:
        """Stop every child process (the running job is requeued); ``recover()`` restarts them."""
        self.jobs.requeue_running()
        self.endpoints.stop_all()
