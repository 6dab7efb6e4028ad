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
KEEP_TAG = "ftpilot-keep"


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
