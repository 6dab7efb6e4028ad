"""Admission control: spend stays bounded however many datasets arrive at once.

Three limits, each checked before the money is spent:

* **Training runs at once** (``max_training_runs``). A validated, split upload is ``queued``,
  with a row in the queue index (its own partition of the run table, keyed so that the table
  returns the rows in upload order: the blob's last-modified time, then when intake queued it);
  ``admit`` gives the free training slots (``shared.slots``) to the runs at the head of the
  index and submits them. It runs after intake queues a run, when a
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
from shared.logs import append_keys
from shared.naming import DATASET_TAG, RUN_TAG, SHA256_TAG, job_name
from shared.platform.port import DataRef, FineTuneRequest, PlatformConfigError
from shared.runs import ADMITTED, RunRecord, RunState, age_s, now
from shared.services import Services
from shared.slots import Slots

log = logging.getLogger(__name__)

TRAINING_SLOTS = "training"
ENDPOINT_SLOTS = "endpoints"
QUEUE = "queue"  # the run table's partition of the queue index: one row per queued run, in upload order
# A queued run that got its slot this long ago and is still queued is submitted by the next admission.
SUBMIT_GRACE_S = 120


@dataclass(frozen=True)
class Limit:
    """A spend limit a run ran into: the setting, its value and the run's figure."""

    setting: str
    maximum: int
    value: int
    reason: str

    def data(self) -> dict[str, Any]:
        return {"setting": self.setting, "maximum": self.maximum, "value": self.value}


def upload_order(record: RunRecord) -> str:
    """Earlier uploads sort first: the blob's last-modified time (whole seconds), then when intake queued it.

    Also the run's row key in the queue index, so the table returns the index in this order.
    """
    return f"{record.uploaded_at or record.created_at}|{record.queued_at}|{record.run_id}"


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


def enqueue(record: RunRecord, services: Services) -> None:
    """Put the run in the queue index; written before the run moves to ``queued``, so no queued run lacks one."""
    row = {"PartitionKey": QUEUE, "RowKey": upload_order(record), "run_id": record.run_id}
    services.storage.table.upsert_entity(row)


def _dequeue(services: Services, key: str) -> None:
    try:
        services.storage.table.delete_entity(QUEUE, key)
    except Exception as error:  # a leftover row is skipped and deleted by a later admission
        log.info("admission: queue row %s left for later: %s", key, error)


def _head(
    services: Services, wanted: int, holders: set[str], granted: set[str]
) -> tuple[list[RunRecord], list[RunRecord]]:
    """From the head of the queue index: up to ``wanted`` queued runs without a slot, and the stuck ones with one.

    ``holders``: the slot holders given their slot over ``SUBMIT_GRACE_S`` ago, so that a
    queued one is stuck (its submit failed or its worker died), not being submitted right now
    by another worker. Rows whose run has moved on are deleted on the way; a row whose run is
    still ``received`` (intake died between the row and the move) is passed over and kept.
    """
    new: list[RunRecord] = []
    held: list[RunRecord] = []
    rows = services.storage.table.query_entities(f"PartitionKey eq '{QUEUE}'", results_per_page=max(8, 2 * wanted))
    for row in rows:
        record = services.runs.get(row["run_id"])
        if record is None or record.state not in (RunState.QUEUED, RunState.RECEIVED):
            _dequeue(services, row["RowKey"])
            continue
        if record.state is not RunState.QUEUED or any(r.run_id == record.run_id for r in (*new, *held)):
            continue
        if record.run_id in holders:
            held.append(record)
        elif record.run_id not in granted:
            new.append(record)
        if len(new) >= wanted:
            break
    return new, held


def admit(services: Services, *, raise_for: str = "") -> list[RunRecord]:
    """Give free training slots to the queued runs, oldest upload first, and submit them.

    Returns the runs submitted (or failed to submit) by this call. With room in the slots it
    reads the slot record and only the head of the queue index (as many queued runs as there
    is room for); with none, one record per holder to free the slots of runs that ended. So
    a burst of uploads, each of which calls it, stays cheap however many wait or have run. A
    transient submit error leaves its run queued, holding its slot, for the next ``admit``;
    for ``raise_for`` (the upload intake is handling) it is raised too, so the trigger is
    retried at once.
    """
    limit = services.settings.max_training_runs
    slots = _training(services)
    seen: dict[str, RunRecord] = {}

    def holds(run_id: str) -> bool:
        record = services.runs.get(run_id)
        if record is not None:
            seen[run_id] = record
        return record is not None and record.state in ADMITTED

    holders, granted = slots.granted()
    if len(holders) >= limit:
        holders = slots.prune(holds)
    overdue = {h for h in holders if age_s(granted.get(h, "")) > SUBMIT_GRACE_S}
    room = limit - len(holders)
    new, held = _head(services, room, overdue, set(holders)) if room > 0 else ([], [])
    given: list[str] = []
    if new:  # the runs this call gives a slot are this call's to submit; others' are theirs
        holders, given = slots.take([r.run_id for r in new], limit, holds)
    stuck = [seen[h] for h in overdue & set(holders) if h in seen and seen[h].state is RunState.QUEUED]
    pending = {r.run_id: r for r in (*held, *stuck, *(r for r in new if r.run_id in given))}
    done = []
    for record in sorted(pending.values(), key=upload_order):
        try:
            submitted = submit(record, services)
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
            continue
        done.append(submitted)
        if submitted.state is not RunState.QUEUED:
            _dequeue(services, upload_order(record))
    return done


def submit(record: RunRecord, services: Services) -> RunRecord:
    """Submit a queued run's fine-tuning job and record it (or the configuration error that stops it)."""
    with append_keys(run_id=record.run_id, job=job_name(record.run_id)):
        return _submit(record, services)


def _submit(record: RunRecord, services: Services) -> RunRecord:
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
        failed = services.runs.update(
            run_id, lambda r: r.moved(RunState.SUBMIT_FAILED, reason=reason) if r.state is RunState.QUEUED else None
        )
        if failed.state is RunState.SUBMIT_FAILED:  # its slot is free at once, for a re-upload or the next run
            _training(services).release(run_id)
        return failed

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

    holders, _ = Slots(services.storage.table, ENDPOINT_SLOTS).take([endpoint], maximum, holds)
    if endpoint in holders or exists:
        return None
    setting = "FTPILOT_MAX_ENDPOINTS"
    reason = f"refused: {len(holders)} endpoints are in use and a new one, {endpoint}, would exceed {setting}={maximum}"
    return Limit(setting, maximum, len(holders) + 1, reason)
