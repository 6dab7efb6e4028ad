"""Submitting the walkthrough's chat-completion pipeline, once per job name, and reading jobs back.

Event Grid and blob triggers deliver at least once, so a submission looks for its job before it
creates one, and the job's name is the request's deterministic ``job_name``: a second delivery finds
the first job. Two deliveries racing past the look both PUT the same name; the service treats the
second PUT as an update of the first job (it answers 200, as recorded), and since both carry the
same request, both end up reading the one job. Checks that can fail (model, compute, parameters, data
paths) all run before the submission, so a bad setting never leaves a half-started run behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core.exceptions import HttpResponseError

from shared.config import Settings
from shared.platform.azureml.compute import gpus_per_node
from shared.platform.azureml.parameters import input_specs, model_defaults, resolve_parameters
from shared.platform.azureml.service import MANAGED_BY, get_or_none, is_not_found, is_user_error, text_of
from shared.platform.finetune import display_name, parameter_layers
from shared.platform.port import (
    DataRef,
    FineTuneRequest,
    JobInfo,
    JobStatus,
    NotFoundError,
    ParamValue,
    PlatformConfigError,
)

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Job, Model, PipelineComponent, PipelineJob

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPONENT_NAME = "chat_completion_pipeline"
# Characters the component's path inputs reject ("Special characters like \ and ' are invalid").
_BAD_PATH_CHARACTERS = ("\\", "'")

# Azure ML job statuses (azure.ai.ml's JobStatus), lower-cased, as the port's statuses. NotResponding is
# not an end: the SDK's enum says a run can leave it for any state, and its job may still be running
# (and billing) or even complete, so it reads as running.
_STATUSES = {
    "notstarted": JobStatus.QUEUED,
    "queued": JobStatus.QUEUED,
    "preparing": JobStatus.QUEUED,
    "provisioning": JobStatus.QUEUED,
    "starting": JobStatus.QUEUED,
    "running": JobStatus.RUNNING,
    "finalizing": JobStatus.RUNNING,
    "cancelrequested": JobStatus.RUNNING,
    "completed": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
    "notresponding": JobStatus.RUNNING,
    "canceled": JobStatus.CANCELED,
}


def submit_finetune(ml_client: MLClient, registry: MLClient, settings: Settings, request: FineTuneRequest) -> JobInfo:
    """Check everything, then submit the pipeline as ``request.job_name``; an existing job is returned as is."""
    existing = find_job(ml_client, request.job_name)
    if existing is not None:
        log.info("job %s already exists; not submitting it again", request.job_name)
        return job_info(existing)

    model_name = request.base_model or settings.base_model
    model = foundation_model(registry, settings, model_name)
    model_tags = dict(model.tags or {})
    gpus = gpus_per_node(ml_client, settings.compute_cluster, model_tags)
    component = _pipeline_component(registry, settings)
    specs = input_specs(component)
    layers = parameter_layers(model_defaults(model_tags, specs), settings.finetune_parameters, request.parameters)
    parameters = resolve_parameters(layers, specs, f"{COMPONENT_NAME} {component.version}")

    job = build_pipeline_job(
        component,
        pipeline_inputs(
            model_id=model.id,
            cluster=settings.compute_cluster,
            train_uri=datastore_uri(settings, request.train),
            test_uri=datastore_uri(settings, request.test),
            gpus_per_node=gpus,
            parameters=parameters,
        ),
    )
    job.name = request.job_name
    job.display_name = display_name(model.name, request.dataset_label, parameters, gpus)
    job.tags = {**request.tags, **MANAGED_BY}
    job.experiment_name = settings.experiment_name
    created = ml_client.jobs.create_or_update(job, experiment_name=settings.experiment_name)
    return job_info(created, parameters)


def pipeline_inputs(
    *,
    model_id: str,
    cluster: str,
    train_uri: str,
    test_uri: str,
    gpus_per_node: int,
    parameters: Mapping[str, ParamValue],
) -> dict[str, Any]:
    """Every input ftpilot passes to the component, as the walkthrough wires them."""
    from azure.ai.ml import Input

    return {
        "mlflow_model_path": model_id,
        "compute_model_import": cluster,
        "compute_preprocess": cluster,
        "compute_finetune": cluster,
        "compute_model_evaluation": cluster,
        "train_file_path": Input(type="uri_file", path=train_uri),
        "test_file_path": Input(type="uri_file", path=test_uri),
        "number_of_gpu_to_use_finetuning": gpus_per_node,
        **parameters,
    }


def build_pipeline_job(component: PipelineComponent, inputs: Mapping[str, Any]) -> PipelineJob:
    """A one-step pipeline job around the registry's pipeline component; its model is ``trained_model``."""
    from azure.ai.ml.dsl import pipeline

    @pipeline()
    def chat_completion_finetune() -> dict[str, Any]:
        chat_completion_pipeline = component(**inputs)
        return {"trained_model": chat_completion_pipeline.outputs.mlflow_model_folder}

    job = chat_completion_finetune()
    job.settings.force_rerun = True  # a rerun must train again, not reuse cached step outputs
    job.settings.continue_on_step_failure = False
    return job


def datastore_uri(settings: Settings, ref: DataRef) -> str:
    """``ref`` through the datastore registered on the intake container."""
    if ref.container != settings.intake_container:
        raise PlatformConfigError(
            f"{ref.container}/{ref.path} is not in the intake container {settings.intake_container!r} on which "
            f"datastore {settings.datastore!r} (FTPILOT_DATASTORE) is registered"
        )
    if any(character in ref.path for character in _BAD_PATH_CHARACTERS):
        raise PlatformConfigError(f"data path {ref.path!r} contains \\ or ', which the pipeline rejects")
    return f"azureml://datastores/{settings.datastore}/paths/{ref.path.lstrip('/')}"


def find_job(ml_client: MLClient, name: str) -> Job | None:
    """The job called ``name``, or None."""
    return get_or_none(ml_client.jobs.get, name)


def begin_cancel_job(ml_client: MLClient, name: str) -> None:
    """Start canceling ``name`` unless it has ended; the poller is dropped, as every ``begin_*`` here does."""
    job = find_job(ml_client, name)
    if job is None:
        raise NotFoundError(f"job {name} does not exist in workspace {ml_client.workspace_name!r}")
    if job_status(text_of(job.status)).terminal:
        return
    ml_client.jobs.begin_cancel(name)


def job_info(job: Job, parameters: Mapping[str, ParamValue] | None = None) -> JobInfo:
    """The port's view of a job. ``parameters`` are known only to the submission that chose them."""
    raw_status = text_of(job.status)
    status = job_status(raw_status)
    error = None
    if status is JobStatus.FAILED:
        # The SDK's job entity carries no failure text; the failed step's logs in the studio do.
        error = f"Azure ML reports the job {raw_status}"
        if job.studio_url:
            error += f"; the failed step's logs say why: {job.studio_url}"
    return JobInfo(
        name=job.name,
        status=status,
        display_name=job.display_name,
        error=error,
        tags=dict(job.tags or {}),
        parameters=dict(parameters or {}),
        studio_url=job.studio_url,
    )


def job_status(status: str | None) -> JobStatus:
    """Azure ML's status as the port's. Unknown ones (Paused, Unknown) read as queued: not terminal."""
    return _STATUSES.get((status or "").lower(), JobStatus.QUEUED)


def foundation_model(registry: MLClient, settings: Settings, name: str) -> Model:
    return _latest(
        lambda: registry.models.get(name, label="latest"),
        f"model {name!r} is not in registry {settings.registry_name!r} (FTPILOT_REGISTRY_NAME); "
        "set FTPILOT_BASE_MODEL (or the request's base_model) to a model that registry holds",
    )


def _pipeline_component(registry: MLClient, settings: Settings) -> PipelineComponent:
    return _latest(
        lambda: registry.components.get(name=COMPONENT_NAME, label="latest"),
        f"component {COMPONENT_NAME!r} is not in registry {settings.registry_name!r}; "
        "set FTPILOT_REGISTRY_NAME to the registry that holds it (azureml)",
    )


def _latest(get: Callable[[], T], missing: str) -> T:
    """A registry asset by ``label="latest"``, or a config error saying which setting to fix.

    The SDK resolves the label by listing versions (``$orderBy=createdtime desc&$top=1``): an empty
    list raises its own ``ValidationException`` (a user error), a missing container a plain 404.
    Retrying either cannot help.
    """
    try:
        return get()
    except HttpResponseError as exc:
        if is_not_found(exc):
            raise PlatformConfigError(missing) from None
        raise
    except Exception as exc:
        if is_user_error(exc):
            raise PlatformConfigError(f"{missing} ({exc})") from None
        raise
