"""The reconciler: on its own timer, it catches what events and messages missed.

Event Grid can drop an event (24 hours of failed deliveries), a subscription can be
misconfigured, a canceled job may emit nothing, a message can go to the poison queue while
storage is down. None of that may strand a run. Each tick looks at every run that is neither
terminal nor live and, when nothing has happened to it for longer than its phase's cadence,
hands it back to the rollout worker: a training run gets a check of its job (which also
enforces the training deadline), a rollout whose re-check is overdue gets that check again
(with the chain's own token, so it continues the chain instead of starting a second one), an
upload that intake never finished is taken through intake again. Leases whose holder has
ended are released, queued uploads are admitted as training slots free (``shared.admission``),
and runs whose lifecycle events are due (a lost wake-up, a backoff over) are queued for sending.

The tick does no platform work itself: it reads the run table (one filtered, paged query)
and sends queue messages, at most ``reconcile_batch`` of them, ``reconcile_concurrency`` at
a time, so it stays far inside the function timeout however many runs there are.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shared import admission, publish
from shared.leases import Lease
from shared.logs import append_keys
from shared.naming import job_name
from shared.rollout import send
from shared.runs import TRAINING, RunRecord, RunState, age_s
from shared.services import Services

log = logging.getLogger(__name__)

# The idle sweep holds a lease for seconds; one older than this belongs to a sweep that died.
SWEEP_LEASE_S = 600


@dataclass(frozen=True)
class Check:
    run_id: str
    action: str  # requeued | intake | superseded | released | admitted | events | failed
    reason: str


def _quiet_s(record: RunRecord) -> float:
    """Seconds since anything happened to the run (a move, a check, a scheduled re-check falling due)."""
    return min(age_s(record.updated_at), age_s(record.checked_at), age_s(record.poll_due_at))


def due(record: RunRecord, services: Services) -> str:
    """Why the run needs a nudge now, or ''."""
    settings = services.settings
    quiet = _quiet_s(record)
    if record.state is RunState.RECEIVED:
        return f"intake unfinished for {quiet:.0f} s" if quiet > settings.reconcile_intake_s else ""
    if record.state in TRAINING:
        return (
            f"nothing heard of job {record.job_name} for {quiet:.0f} s" if quiet > settings.reconcile_training_s else ""
        )
    if record.poll_token and age_s(record.poll_due_at) <= settings.reconcile_rollout_s:
        return ""  # its re-check is on its way
    if quiet > settings.reconcile_rollout_s:
        return f"{record.state} without progress for {quiet:.0f} s"
    return ""


def _nudge(record: RunRecord, reason: str, services: Services) -> Check:
    if record.state is RunState.RECEIVED:
        return _intake_again(record, reason, services)
    send(services, {"run_id": record.run_id, "token": record.poll_token, "by": "reconciler"})
    # A job trains for hours with no event between running and done, so its periodic check is
    # routine; a rollout whose own re-check went missing is not.
    level = logging.INFO if record.state in TRAINING else logging.WARNING
    log.log(level, "reconcile: run %s (%s) re-queued: %s", record.run_id, record.state, reason)
    return Check(record.run_id, "requeued", reason)


def _intake_again(record: RunRecord, reason: str, services: Services) -> Check:
    """Take an unfinished upload through intake again, unless it was replaced or deleted since."""
    from azure.core.exceptions import ResourceNotFoundError

    from shared.intake import handle_upload

    blob = services.storage.blob(record.dataset)
    try:
        etag = blob.get_blob_properties().etag
    except ResourceNotFoundError:
        etag = ""
    if etag != record.source_etag:
        gone = f"{record.dataset} was replaced or deleted before intake finished"
        # Intake may have submitted the job and died before recording it: the job name says.
        job = services.platform.get_job(job_name(record.run_id))
        if job is not None and not job.status.terminal:
            services.platform.begin_cancel_job(job.name)
            gone += f"; job {job.name} canceled"
        found = job.name if job is not None else ""
        services.runs.update(
            record.run_id,
            lambda r: (
                r.moved(RunState.SUPERSEDED, reason=gone, job_name=found) if r.state is RunState.RECEIVED else None
            ),
        )
        return Check(record.run_id, "superseded", gone)
    outcome = handle_upload(blob, services)
    log.warning("reconcile: run %s: %s; intake again: %s", record.run_id, reason, outcome.action)
    return Check(record.run_id, "intake", f"{reason}; {outcome.action} {outcome.reason}".strip())


def _release(lease: Lease, services: Services) -> Check | None:
    """Release the lease's holder or contender if it no longer has a claim; None when both still do."""
    if lease.holder.startswith("sweep:"):
        if age_s(lease.since) <= SWEEP_LEASE_S:
            return None
        services.leases.release(lease.endpoint, lease.holder)
        return Check("", "released", f"{lease.endpoint}: the sweep that took it {lease.since} is gone")
    for run_id, holds in ((lease.holder, True), (lease.contender, False)):
        if not run_id:
            continue
        record = services.runs.get(run_id)
        state = record.state if record is not None else None
        # A holder has just taken the lease (registered) or is rolling out; a contender waits unsettled.
        if state is not None and not state.settled and (not holds or state.rolling_out or state is RunState.REGISTERED):
            continue
        champion = record if state is RunState.LIVE else None
        services.leases.release(lease.endpoint, run_id, champion=champion)
        return Check(run_id, "released", f"{lease.endpoint}: run {run_id} is {state or 'missing'}")
    return None


def reconcile(services: Services) -> list[Check]:
    """One tick: nudge what is overdue, release what is held by nobody; returns what it did."""
    settings = services.settings
    overdue = ((r, why) for r in services.runs.unsettled() if (why := due(r, services)))
    batch = list(itertools.islice(overdue, settings.reconcile_batch))

    def one(item: tuple[RunRecord, str]) -> Check:
        record, reason = item
        try:
            with append_keys(run_id=record.run_id, job=record.job_name, endpoint=record.endpoint):
                return _nudge(record, reason, services)
        except Exception as error:  # one run's trouble must not stop the tick; the next tick retries
            log.exception("reconcile: run %s could not be re-queued", record.run_id)
            return Check(record.run_id, "failed", f"{type(error).__name__}: {error}")

    with ThreadPoolExecutor(max_workers=settings.reconcile_concurrency) as pool:
        checks = list(pool.map(one, batch))
    for lease in services.leases.taken():
        released = _release(lease, services)
        if released is not None:
            log.warning("reconcile: lease released: %s", released.reason)
            checks.append(released)
    try:
        for record in admission.admit(services):
            checks.append(Check(record.run_id, "admitted", f"a training slot freed; {record.state}"))
    except Exception as error:  # the next tick admits again
        log.exception("reconcile: admission failed")
        checks.append(Check("", "failed", f"admission: {type(error).__name__}: {error}"))
    for record in publish.overdue(services, settings.reconcile_batch):
        publish.nudge(services, record.run_id)
        checks.append(Check(record.run_id, "events", f"{len(record.unsent)} lifecycle events to send"))
    return checks
