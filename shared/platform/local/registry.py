"""Registering a local job's trained model in MLflow's model registry, once per run.

MLflow numbers versions 1, 2, 3, as an Azure ML workspace does, and ``ModelInfo.version`` is that
number, so ``models:/<name>/<version>`` built from what ``status`` shows is what a deployment loads.
The run id is a tag on the version, and a registration looks for it first: a retried rollout finds
what it registered before instead of adding a version.

Look-then-register runs under the state database's write lock, so two processes registering the
same version at once create one MLflow version, not two. As in the Azure adapter, an existing
version that holds another job's model is a conflict, not a match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.naming import MANAGED_TAG, MANAGED_VALUE
from shared.platform.local import tracking
from shared.platform.local.jobs import JobRecord
from shared.platform.local.layout import Layout
from shared.platform.local.store import Store
from shared.platform.port import (
    ConflictError,
    JobStatus,
    ModelInfo,
    ModelRequest,
    NotFoundError,
    PlatformConfigError,
    PlatformError,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

RUN_ID_TAG = "ftpilot_run"  # searchable (MLflow filters take no "-" in a tag name unquoted)
JOB_TAG = "ftpilot_job"
_INTERNAL_TAGS = {RUN_ID_TAG, JOB_TAG}
# Names and versions end up in an MLflow search filter: nothing that could quote its way out.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def _checked(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PlatformConfigError(f"model {kind} {value!r}: use letters, digits, '.', '-' and '_'")
    return value


class Registry:
    """The model registry of one local workspace."""

    def __init__(self, layout: Layout, store: Store) -> None:
        self.layout = layout
        self.store = store

    def register(self, request: ModelRequest, job: JobRecord | None) -> ModelInfo:
        """Register ``job``'s trained model as a new version of ``request.name`` unless the run already did."""
        mlflow_client = tracking.client(self.layout)
        existing = self._find(mlflow_client, request.name, request.run_id)
        if existing is not None:
            return self._same_job(existing, request)
        if job is None:
            raise NotFoundError(f"job {request.job_name} does not exist")
        if job.status is not JobStatus.COMPLETED or not job.model_uri:
            raise PlatformError(f"job {job.name} has no trained model to register (it is {job.status})")
        from mlflow.exceptions import MlflowException

        with self.store.write():
            existing = self._find(mlflow_client, request.name, request.run_id)
            if existing is not None:
                return self._same_job(existing, request)
            try:
                mlflow_client.create_registered_model(request.name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            # The registry would resolve a models:/ source through MLflow's process-global tracking URI,
            # not this client's (a TODO in MLflow), so it gets the logged model's artifact folder.
            model_id = job.model_uri.removeprefix("models:/")
            created = mlflow_client.create_model_version(
                request.name,
                source=mlflow_client.get_logged_model(model_id).artifact_location,
                run_id=job.mlflow_run_id,
                tags={
                    **request.tags,
                    MANAGED_TAG: MANAGED_VALUE,
                    RUN_ID_TAG: request.run_id,
                    JOB_TAG: job.name,
                },
                description=request.description,
                model_id=model_id,
            )
        return _info(created)

    def get(self, name: str, version: str) -> ModelInfo | None:
        if not version.isdigit():
            return None
        from mlflow.exceptions import MlflowException

        try:
            return _info(tracking.client(self.layout).get_model_version(_checked("name", name), version))
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def tag(self, name: str, version: str, tags: Mapping[str, str]) -> ModelInfo:
        mlflow_client = tracking.client(self.layout)
        if self.get(name, version) is None:
            raise NotFoundError(f"model {name}:{version} is not registered")
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, value)
        return _info(mlflow_client.get_model_version(name, version))

    def _find(self, mlflow_client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
        query = f"name = '{_checked('name', name)}' AND tags.{RUN_ID_TAG} = '{_checked('run id', run_id)}'"
        found = mlflow_client.search_model_versions(query)
        return min(found, key=lambda version_: int(version_.version)) if found else None

    @staticmethod
    def _same_job(existing: ModelVersion, request: ModelRequest) -> ModelInfo:
        holder = existing.tags.get(JOB_TAG)
        if holder and holder != request.job_name:
            raise ConflictError(
                f"model {request.name} version {existing.version} (run {request.run_id}) already holds "
                f"job {holder}'s output, not job {request.job_name}'s"
            )
        return _info(existing)


def _info(version: ModelVersion) -> ModelInfo:
    return ModelInfo(
        name=version.name,
        version=str(version.version),
        id=f"models:/{version.name}/{version.version}",
        tags={key: value for key, value in version.tags.items() if key not in _INTERNAL_TAGS},
    )
