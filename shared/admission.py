"""Admission control: spend stays bounded however many datasets arrive at once.

Three limits, each checked before the money is spent:

* **Training runs at once** (``max_training_runs``). A validated, split upload is ``queued``;
  ``admit`` gives the free training slots (``shared.slots``) to the queued runs in upload order
  (the blob's last-modified time) and submits them. It runs after intake queues a run, when a
  run's training ends, and on every reconciler tick, so a slot that frees is taken within a
  tick even if every other trigger was lost. A run that holds a slot and is still queued (a
  worker died between the two) is submitted by the next ``admit``: job names are derived from
  the run, so a second submit finds the first job.
* **Billed training tokens per run** (``max_training_tokens``): the validation report's
  estimate; a larger dataset is ``refused`` before submission, and its report says why.
* **Endpoints at once** (``max_endpoints``): a run that would create one more endpoint than
  the limit is ``refused`` before deploying (its model stays registered); one that replaces
  the model of an endpoint that exists is not limited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared.blobnames import dataset_label
from shared.lifecycle import event, with_event
from shared.naming import DATASET_TAG, RUN_TAG, SHA256_TAG, job_name
from shared.platform.port import DataRef, FineTuneRequest, PlatformConfigError
from shared.runs import ADMITTED, RunRecord, RunState, now
from shared.services import Services
from shared.slots import Slots

log = logging.getLogger(__name__)

TRAINING_SLOTS = "training"
ENDPOINT_SLOTS = "endpoints"


@dataclass(frozen=True)
class Limit:
    """A spend limit a run ran into: the setting, its value and the run's figure."""

    setting: str
    maximum: int
    value: int
    reason: str

    def data(self) -> dict[str, Any]:
        return {"setting": self.setting, "maximum": self.maximum, "value": self.value}


def upload_order(record: RunRecord) -> tuple[str, str, str]:
    """Earlier uploads first: the blob's last-modified time (whole seconds), then when intake queued it."""
    return (record.uploaded_at or record.created_at, record.queued_at, record.run_id)


def token_limit(billed_tokens: int, services: Services) -> Limit | None:
    """The token limit ``billed_tokens`` exceeds, or None."""
    maximum = services.settings.max_training_tokens
    if maximum is None or billed_tokens <= maximum:
        return None
    setting, epochs = "FTPILOT_MAX_TRAINING_TOKENS", services.settings.epochs
    reason = (
        f"refused: an estimated {billed_tokens:,} billed training tokens ({epochs} epochs) exceed {setting}={maximum:,}"
    )
    return Limit(setting, maximum, billed_tokens, reason)


def refuse(record: RunRecord, limit: Limit, services: Services, *, before: frozenset[RunState]) -> RunRecord:
    """Move the run to ``refused`` (from one of ``before``), with its event carrying the limit."""

    def change(current: RunRecord) -> RunRecord | None:
        if current.state not in before:
            return None
        moved = current.moved(RunState.REFUSED, reason=limit.reason)
        return with_event(moved, event(moved, "refused", limit=limit.data()))

    refused = services.runs.update(record.run_id, change)
    if refused.state is RunState.REFUSED:
        log.warning("admission: run %s %s", record.run_id, limit.reason)
    return refused


def _training(services: Services) -> Slots:
    return Slots(services.storage.table, TRAINING_SLOTS)


def admit(services: Services, *, raise_for: str = "") -> list[RunRecord]:
    """Give free training slots to the queued runs, oldest upload first, and submit them.

    Returns the runs submitted (or failed to submit) by this call. While every slot is held
    it costs one read per holder and never scans the queue, so a burst of uploads, each of
    which calls it, stays cheap. A transient submit error leaves its run queued, holding its
    slot, for the next ``admit``; for ``raise_for`` (the upload intake is handling) it is
    raised too, so the trigger is retried at once.
    """
    limit = services.settings.max_training_runs
    seen: dict[str, RunRecord] = {}

    def holds(run_id: str) -> bool:
        record = services.runs.get(run_id)
        if record is not None:
            seen[run_id] = record
        return record is not None and record.state in ADMITTED

    slots = _training(services)
    holders = slots.take([], limit, holds)  # let go of the runs that ended
    if len(holders) < limit:
        queued = sorted(services.runs.where("state", str(RunState.QUEUED)), key=upload_order)
        holders = slots.take([r.run_id for r in queued], limit, holds)
        seen.update((r.run_id, r) for r in queued if r.run_id not in seen)
    pending = sorted((seen[h] for h in holders if h in seen and seen[h].state is RunState.QUEUED), key=upload_order)
    done = []
    for record in pending:
        try:
            done.append(submit(record, services))
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"[:2000]
            note = f"submit failed, retried: {reason}"
            services.runs.update(
                record.run_id,
                lambda r, note=note: r.noted(note) if r.state is RunState.QUEUED else None,
            )
            log.warning("admission: run %s stays queued: %s", record.run_id, reason)
            if record.run_id == raise_for:
                raise
    return done


def submit(record: RunRecord, services: Services) -> RunRecord:
    """Submit a queued run's fine-tuning job and record it (or the configuration error that stops it)."""
    settings = services.settings
    run_id = record.run_id
    request = FineTuneRequest(
        job_name=job_name(run_id),
        base_model=record.base_model or settings.base_model,
        train=DataRef(settings.intake_container, record.train_path),
        test=DataRef(settings.intake_container, record.test_path),
        dataset_label=dataset_label(record.dataset),
        parameters=dict(record.inputs),
        tags={RUN_TAG: run_id, DATASET_TAG: record.dataset[:256], SHA256_TAG: record.sha256},
    )
    try:
        job = services.platform.submit_finetune(request)
    except PlatformConfigError as error:
        # Retrying cannot help until someone fixes the setting or the workspace: record and stop.
        reason = str(error)
        log.error("admission: run %s not submitted: %s", run_id, reason)
        return services.runs.update(
            run_id, lambda r: r.moved(RunState.SUBMIT_FAILED, reason=reason) if r.state is RunState.QUEUED else None
        )

    def submitted(current: RunRecord) -> RunRecord | None:
        if current.state is not RunState.QUEUED:
            return None  # another worker got there first; its record stands
        return current.moved(
            RunState.SUBMITTED,
            f"job {job.name}",
            job_name=job.name,
            parameters=dict(job.parameters),
            reason="",
            phase_started_at=now(),
        )

    stored = services.runs.update(run_id, submitted)
    log.info("admission: run %s submitted as job %s", run_id, job.name)
    return stored


def endpoint_limit(endpoint: str, exists: bool, services: Services) -> Limit | None:
    """Take a slot for ``endpoint``; the limit it would exceed when it is new and none is free, else None."""
    maximum = services.settings.max_endpoints
    if maximum is None:
        return None

    def holds(name: str) -> bool:
        lease = services.leases.get(name)
        if name == endpoint or (lease is not None and lease.holder):
            return True
        return any(r.state.rolling_out or r.state is RunState.LIVE for r in services.runs.where("endpoint", name))

    holders = Slots(services.storage.table, ENDPOINT_SLOTS).take([endpoint], maximum, holds)
    if endpoint in holders or exists:
        return None
    setting = "FTPILOT_MAX_ENDPOINTS"
    reason = f"refused: {len(holders)} endpoints are in use and a new one, {endpoint}, would exceed {setting}={maximum}"
    return Limit(setting, maximum, len(holders) + 1, reason)
