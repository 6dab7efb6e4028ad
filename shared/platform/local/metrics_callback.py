"""Training metrics into the active MLflow run, as the Trainer logs them.

transformers ships an ``MLflowCallback``, but it opens and closes runs itself from environment
variables and logs every ``TrainingArguments`` field as a param. The trainer wants its own run
(opened before training, its id recorded on the job, tagged like the job) whose params are the
pipeline's inputs, so this callback only forwards metrics: per-step ``loss``, ``learning_rate``,
``grad_norm``, each evaluation's ``eval_loss``, and the final ``train_loss`` and ``train_runtime``.

Imports transformers and MLflow at the top: only the trainer process imports this module.
"""

from __future__ import annotations

from typing import Any

import mlflow
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class MlflowMetrics(TrainerCallback):
    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        metrics = {key: float(value) for key, value in (logs or {}).items() if isinstance(value, int | float)}
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)
