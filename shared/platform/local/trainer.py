"""One local fine-tuning job, in its own process: ``python -m shared.platform.local.trainer <job dir>``.

What Azure's chat-completion pipeline does, on this machine: download the train and test splits,
resolve the base model, render every conversation with the tokenizer's chat template, fine-tune
with TRL's ``SFTTrainer`` (LoRA through peft when ``apply_lora`` says so) using the job's resolved
parameters, evaluate on the test split, and log it all to MLflow: parameters, the training loss by
step, eval loss, runtime, and the trained model as the run's ``trained_model`` output.

The model is logged with MLflow's transformers flavor, LoRA merged into the base weights, with the
tokenizer and its chat template. That is the format Azure's pipeline registers (an MLflow model
folder, not a pyfunc wrapper around our own code), so the registered model loads with nothing
ftpilot-specific. It is logged with the flavor's chat task (``llm/v1/chat``), whose signature is
OpenAI's messages in and a ``chat.completion`` out, so ``mlflow models serve`` on the registered
model takes conversations, not a bare string.

The process reports its own end (completed, or failed with the end of its traceback) to the state
database, emits the run events, and starts the next queued job. The splits are fetched before the
heavy imports (trl, peft, transformers, MLflow: ~10 s on two cores), so a job with missing
data fails at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.platform.local import base_model, conversations, tracking
from shared.platform.local.chat_template import PHI3_TEMPLATE
from shared.platform.local.conversations import Conversation
from shared.platform.local.jobs import JobRecord, Jobs
from shared.platform.local.layout import Layout
from shared.platform.local.store import Store
from shared.platform.local.training_plan import TrainingPlan, plan
from shared.platform.port import FineTuneRequest, JobStatus

log = logging.getLogger("ftpilot.trainer")

MODEL_OUTPUT = "trained_model"
# MLflow's transformers task for chat models: OpenAI-style messages in, a chat completion out.
CHAT_TASK = "llm/v1/chat"
SERVING_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers")
ERROR_LINES = 6
CLAIM_WAIT_S = 10.0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # its INFO is every HTTP header
    job_dir = Path(argv[0])
    settings = Settings()
    jobs = Jobs(settings, Store(Layout(settings.data_dir).state_db))
    job = _claimed(jobs, job_dir.name)
    if job is None:
        log.warning("job %s is not waiting for this process (pid %d); exiting", job_dir.name, os.getpid())
        return 0
    try:
        model_uri = train(settings, jobs, job)
    except Exception as error:
        log.exception("job %s failed", job.name)
        lines = "".join(traceback.format_exception(error)).strip().splitlines()
        jobs.finish(job.name, JobStatus.FAILED, pid=os.getpid(), error="\n".join(lines[-ERROR_LINES:]))
        jobs.tick()
        return 1
    jobs.finish(job.name, JobStatus.COMPLETED, pid=os.getpid(), model_uri=model_uri)
    log.info("job %s completed: %s", job.name, model_uri)
    jobs.tick()
    return 0


def _claimed(jobs: Jobs, name: str) -> JobRecord | None:
    """The job, once the launcher's transaction marks it running with this pid (it commits just after spawning)."""
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        job = jobs.record(name)
        if job is not None and job.status is JobStatus.RUNNING and job.proc and job.proc.pid == os.getpid():
            return job
        if job is None or job.status is not JobStatus.QUEUED or time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def train(settings: Settings, jobs: Jobs, job: JobRecord) -> str:
    """Fine-tune, evaluate and log ``job``; return the MLflow URI of its trained model."""
    job_dir = jobs.layout.job_dir(job.name)
    training = plan(job.parameters)
    splits = _download_splits(settings, job_dir, job.request)
    if training.ignored:
        log.info("parameters with no local meaning, ignored: %s", ", ".join(training.ignored))

    import mlflow
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_warning()
    texts = [message["content"] for conversation in splits["train"] for message in conversation]
    base = base_model.resolve(job.request.base_model, settings.local_base_model, texts, jobs.layout.base_models)
    log.info("base model: %s", base.source)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PHI3_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base.path)
    max_length = training.max_seq_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)

    mlflow_client = tracking.client(jobs.layout)
    experiment = tracking.experiment_id(mlflow_client, jobs.layout, settings.experiment_name)
    if job.mlflow_run_id:  # an earlier attempt, stopped by shutdown(), left its run open
        mlflow_client.set_terminated(job.mlflow_run_id, "KILLED")
    mlflow.set_tracking_uri(tracking.tracking_uri(jobs.layout))
    tags = {**job.request.tags, "ftpilot_job": job.name}
    with mlflow.start_run(experiment_id=experiment, run_name=job.name, tags=tags) as run:
        jobs.set_mlflow_run(job.name, run.info.run_id)
        mlflow.log_params(
            {
                **job.parameters,
                "base_model": base.source,
                "dataset_label": job.request.dataset_label,
                "max_length": max_length,
                "ignored_parameters": ", ".join(training.ignored) or "none",
            }
        )
        trained = _fit(model, tokenizer, splits, training, max_length=max_length, output_dir=job_dir / "checkpoints")
        logged = mlflow.transformers.log_model(
            {"model": trained, "tokenizer": tokenizer},
            name=MODEL_OUTPUT,
            task=CHAT_TASK,
            # Pinned to what trained it; also spares MLflow's inference, which wants torchvision.
            pip_requirements=[f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES],
        )
    return logged.model_uri


def _download_splits(settings: Settings, job_dir: Path, request: FineTuneRequest) -> dict[str, list[Conversation]]:
    """The train and test conversations, kept in the job's folder for inspection."""
    splits = {}
    for split, ref in (("train", request.train), ("test", request.test)):
        path = conversations.download(settings.storage_account, ref, job_dir / "data" / f"{split}.jsonl")
        splits[split] = conversations.read(path, f"{split} split {ref.container}/{ref.path}")
    log.info("%d train and %d test conversations", len(splits["train"]), len(splits["test"]))
    return splits


def _fit(
    model: Any,
    tokenizer: Any,
    splits: dict[str, list[Conversation]],
    training: TrainingPlan,
    *,
    max_length: int,
    output_dir: Path,
) -> Any:
    """SFT on the chat-templated train split, evaluated on the test split; the model with LoRA merged."""
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from shared.platform.local.metrics_callback import MlflowMetrics

    datasets.disable_progress_bars()
    data = {
        split: datasets.Dataset.from_list(
            [{"text": tokenizer.apply_chat_template(conversation, tokenize=False)} for conversation in rows]
        )
        for split, rows in splits.items()
    }
    lora = None
    if training.lora is not None:
        lora = LoraConfig(**training.lora, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(output_dir),
            **training.sft,
            max_length=max_length,
            dataset_text_field="text",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            # On CPU, bf16 and (TRL's default) gradient checkpointing make training ~10x slower;
            # transformers 5 calls gradient checkpointing activation checkpointing.
            bf16=False,
            activation_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[MlflowMetrics()],
    )
    trainer.train()
    trainer.evaluate()
    return trainer.model.merge_and_unload() if lora is not None else trainer.model


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
