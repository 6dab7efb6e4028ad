"""Deterministic names for what a rollout creates.

Everything is named from the run (content hash) or the dataset, never from a clock or a
counter, so a repeated or duplicated event finds what an earlier attempt created instead of
making a second copy. The rules are Azure ML's: endpoint names 3-32 characters, starting
with a letter, letters/digits/hyphens, unique in the region; deployments 3-32 likewise.
"""

from __future__ import annotations

import hashlib
import re

from shared.blobnames import dataset_label

MANAGED_TAG = "managed-by"
MANAGED_VALUE = "ftpilot"
RUN_TAG = "ftpilot-run"
DATASET_TAG = "ftpilot-dataset"
JOB_TAG = "ftpilot-job"
VERDICT_TAG = "ftpilot-gate"  # on a model version the promotion gate turned away, with why
SHA256_TAG = "ftpilot-sha256"
KEEP_TAG = "ftpilot-keep"

JOB_PREFIX = "ftpilot-"
RUN_ID_LENGTH = 20
# What ftpilot's job names look like; anything else in an event is not ours (and never a table key).
JOB_NAME = re.compile(rf"{JOB_PREFIX}([0-9a-f]{{{RUN_ID_LENGTH}}})")


def run_id_for(sha256: str, sidecar_sha256: str = "") -> str:
    """Runs are identified by what is trained on, not by the file name."""
    return hashlib.sha256(f"{sha256}:{sidecar_sha256}".encode()).hexdigest()[:RUN_ID_LENGTH]


def job_name(run_id: str) -> str:
    return f"{JOB_PREFIX}{run_id}"


def run_id_of_job(name: str) -> str | None:
    """The run id in one of ftpilot's job names, or None when ``name`` is not one."""
    match = JOB_NAME.fullmatch(name)
    return match.group(1) if match else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def model_name(base_model: str, dataset: str) -> str:
    """``Phi-3-mini-4k-instruct`` + ``incoming/chat.jsonl`` -> ``phi-3-mini-4k-instruct-chat``."""
    return f"{_slug(base_model.rsplit('/', 1)[-1])}-{dataset_label(dataset)}"[:200]


def endpoint_name(dataset: str) -> str:
    """Stable per dataset name, so a new upload of the same file rolls out onto the same endpoint.

    The hash suffix keeps datasets whose labels truncate alike apart.
    """
    digest = hashlib.sha256(dataset.encode()).hexdigest()[:6]
    return f"ft-{dataset_label(dataset, limit=21)}-{digest}"


def deployment_name(run_id: str) -> str:
    return f"d-{run_id[:12]}"
