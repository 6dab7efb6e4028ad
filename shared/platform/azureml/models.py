"""Registering a job's fine-tuned model, once per name and version.

The pipeline's ``trained_model`` output is an MLflow model, so it registers as one and deploys
without a scoring script or environment. A registration looks first: the rollout may retry after
a crash between "registered" and "recorded", and a version, once registered, is immutable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from azure.core.exceptions import HttpResponseError

from shared.platform.azureml.service import MANAGED_BY, get_or_none, is_conflict
from shared.platform.port import ConflictError, ModelInfo, ModelRequest

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import Model


def register_model(ml_client: MLClient, request: ModelRequest) -> ModelInfo:
    """Register ``request.job_name``'s trained model; the existing version when it is already there."""
    existing = find_model(ml_client, request.name, request.version)
    if existing is not None:
        return _checked(existing, request)
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    model = Model(
        path=f"azureml://jobs/{request.job_name}/outputs/trained_model",
        type=AssetTypes.MLFLOW_MODEL,
        name=request.name,
        version=request.version,
        description=request.description,
        tags={**request.tags, **MANAGED_BY},
    )
    try:
        return model_info(ml_client.models.create_or_update(model))
    except HttpResponseError as exc:
        winner = find_model(ml_client, request.name, request.version) if is_conflict(exc) else None
        if winner is None:
            raise
        return _checked(winner, request)


def find_model(ml_client: MLClient, name: str, version: str) -> Model | None:
    """Version ``version`` of model ``name``, or None."""
    return get_or_none(ml_client.models.get, name, version)


def model_info(model: Model) -> ModelInfo:
    return ModelInfo(name=model.name, version=str(model.version), id=model.id, tags=dict(model.tags or {}))


def _checked(existing: Model, request: ModelRequest) -> ModelInfo:
    """An existing version is ours only if it came from the same job (when the service says which)."""
    if existing.job_name and existing.job_name != request.job_name:
        raise ConflictError(
            f"model {request.name} version {request.version} already holds job {existing.job_name}'s output, "
            f"not job {request.job_name}'s"
        )
    return model_info(existing)
