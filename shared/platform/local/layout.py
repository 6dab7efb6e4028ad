"""Where the local workspace keeps each thing under ``data_dir``, in one place.

The adapter, the trainer, the router and the deployment servers are separate processes that find
each other's state only through these paths, so they are derived here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The folders and files of one local workspace rooted at an absolute ``root``."""

    root: Path

    @property
    def state_db(self) -> Path:
        """Jobs, endpoints, deployments and request counts (sqlite, WAL)."""
        return self.root / "state.db"

    @property
    def outbox(self) -> Path:
        """Run events waiting for the local host to deliver them."""
        return self.root / "outbox"

    @property
    def keys(self) -> Path:
        """Endpoint keys, one owner-only file each."""
        return self.root / "keys"

    @property
    def mlflow_db(self) -> Path:
        """MLflow's tracking store and model registry."""
        return self.root / "mlflow" / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        """MLflow's artifact root: trained models live here, not in ``./mlruns`` of whatever the cwd was."""
        return self.root / "mlflow" / "artifacts"

    @property
    def base_models(self) -> Path:
        """Built stand-in base models, reused across jobs."""
        return self.root / "base_models"

    def job_dir(self, name: str) -> Path:
        """A job's working folder: its log, downloaded data and trainer scratch."""
        return self.root / "jobs" / name

    def endpoint_dir(self, name: str) -> Path:
        """An endpoint's process logs (router and deployments)."""
        return self.root / "endpoints" / name
