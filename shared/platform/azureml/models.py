"""Registering a job's fine-tuned model, once per run, under the version the workspace numbers.

Workspace model versions are positive integers ("1", "2", ...): the service refuses anything else.
So a run cannot name its version in advance; it takes the next free number and marks it with its
run id (the ``ftpilot-run`` tag). A registration first looks for a version carrying that tag: the
rollout may retry after a crash between "registered" and "recorded", and must find its version
again instead of adding a second. Two runs that take the same number at once collide (409) and the
loser looks again. The pipeline's ``trained_model`` output is an MLflow model, so it registers as
one and deploys without a scoring script or environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from azure.core.exceptions import HttpResponseError

from shared.naming import RUN_TAG
from shared.platform.azureml.service import MANAGED_BY, get_or_none, is_conflict, is_not_found
from shared.platform.port import ConflictError, ModelInfo, ModelRequest, NotFoundError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Model

# Registrations of other runs that may take the next number first before this one gives up.
_ATTEMPTS = 5


def register_model(ml_client: MLClient, request: ModelRequest) -> ModelInfo:
    """Register ``request.job_name``'s trained model; the run's existing version when there is one."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    for _ in range(_ATTEMPTS):
        versions = list_versions(ml_client, request.name)
        mine = [model for model in versions if (model.tags or {}).get(RUN_TAG) == request.run_id]
        if mine:
            return _checked(min(mine, key=_number), request)
        model = Model(
            path=f"azureml://jobs/{request.job_name}/outputs/trained_model",
            type=AssetTypes.MLFLOW_MODEL,
            name=request.name,
            version=str(max((_number(model) for model in versions), default=0) + 1),
            description=request.description,
            tags={**request.tags, RUN_TAG: request.run_id, **MANAGED_BY},
        )
        try:
            return model_info(ml_client.models.create_or_update(model))
        except HttpResponseError as exc:
            if not is_conflict(exc):
                raise
    raise ConflictError(
        f"model {request.name}: other registrations kept taking the next version; run {request.run_id} will retry"
    )


def list_versions(ml_client: MLClient, name: str) -> list[Model]:
    """Every version of model ``name``, archived ones too (they keep their numbers); none for a new name."""
    from azure.ai.ml.constants import ListViewType

    try:
        return list(ml_client.models.list(name=name, list_view_type=ListViewType.ALL))
    except HttpResponseError as exc:
        if is_not_found(exc):  # the recorded answer for a name never registered: 404 ModelNotFound
            return []
        raise


def find_model(ml_client: MLClient, name: str, version: str) -> Model | None:
    """Version ``version`` of model ``name``, or None."""
    return get_or_none(ml_client.models.get, name, version)


def tag_model(ml_client: MLClient, name: str, version: str, tags: Mapping[str, str]) -> ModelInfo:
    """The version PUT again with ``tags`` added: the same asset, so the workspace takes it as an update."""
    model = find_model(ml_client, name, version)
    if model is None:
        raise NotFoundError(f"model {name}:{version} is not registered")
    model.tags = {**(model.tags or {}), **tags}
    return model_info(ml_client.models.create_or_update(model))


def model_info(model: Model) -> ModelInfo:
    return ModelInfo(name=model.name, version=str(model.version), id=model.id, tags=dict(model.tags or {}))


def _number(model: Model) -> int:
    version = str(model.version)
    return int(version) if version.isdigit() else 0


def _checked(existing: Model, request: ModelRequest) -> ModelInfo:
    """A version tagged with the run is ours only if it came from the same job (when the service says which)."""
    if existing.job_name and existing.job_name != request.job_name:
        raise ConflictError(
            f"model {request.name} version {existing.version} (run {request.run_id}) already holds job "
            f"{existing.job_name}'s output, not job {request.job_name}'s"
        )
    return model_info(existing)
