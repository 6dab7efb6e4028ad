"""MLflow for the local workspace: a sqlite tracking store and model registry under ``data_dir``.

Every process (trainer, adapter, deployment server) reaches MLflow through these helpers, with an
explicit client rather than MLflow's process-global URI, and artifacts under ``data_dir`` (the
default would be ``./mlruns`` of whatever directory the process happened to start in). MLflow is
imported only here and only on use: it costs seconds, and the adapter is imported by every Functions
handler. Its usage telemetry is turned off before the import; the local workspace sends nothing out.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from shared.platform.local.layout import Layout

if TYPE_CHECKING:
    from mlflow import MlflowClient


def tracking_uri(layout: Layout) -> str:
    return f"sqlite:///{layout.mlflow_db}"


def client(layout: Layout) -> MlflowClient:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    layout.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(layout)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: MlflowClient, layout: Layout, name: str) -> str:
    """The experiment's id, creating it with its artifacts under ``data_dir`` when missing."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=layout.artifacts.as_uri())
    except MlflowException:  # created meanwhile by another process
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def final_metrics(layout: Layout, run_id: str) -> dict[str, float]:
    """Each metric's last value in the run: ``train_loss``, ``eval_loss``, ``train_runtime``, per-step ``loss``..."""
    return {key: float(value) for key, value in client(layout).get_run(run_id).data.metrics.items()}
