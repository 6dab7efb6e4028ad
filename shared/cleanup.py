"""The idle sweep: delete the endpoints ftpilot manages that nobody has used, and nothing else.

An endpoint is a candidate only if it carries ftpilot's ``managed-by`` tag. It is deleted
when it served no request in the whole idle window (ftpilot's own smoke-test and promotion-gate
requests discounted; its run live for at least that window), is older than the grace period, has no
opt-out tag, and no run is rolling out to it; and, when it has a run to tell, only after the
deletion was announced (an ``idle_deletion_scheduled`` event, ``idle_notice`` seconds ahead)
with nobody calling it since. Both events say what the deletion saves a day at the run's
instance type and count (``instance_prices``). The metrics calls are slow, so that last check
is made twice: from the records read at the start, and again right before the delete, with
the endpoint's lease taken for the sweep, so a rollout that starts meanwhile either waits
for the sweep or is seen. On the endpoints it keeps, the sweep deletes orphan deployments:
no live or rolling-out run owns them, they take no traffic and are older than the grace.

Every decision is written to the run record; a failed delete is reported and, since the
endpoint is still there, retried on the next tick. The record hears of a deletion only after
it was begun, and the answer can be lost on the way (a timeout after the service took the
delete, a worker killed right after it), so the sweep also looks for live runs whose endpoint
is being deleted or gone, and retires them: as the idle deletion it is, when the run's note
shows that the sweep had begun it, or else as an endpoint someone else deleted.

Endpoints are checked concurrently with a bound: each check is a network call (Azure Monitor,
one per endpoint: its per-minute counts answer both the window and the window less the
notice) and a fleet can be hundreds of endpoints.
"""

from __future__ import annotations

import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from shared import lifecycle
from shared.leases import LeaseVersion
from shared.lifecycle import event, notice_id, with_event
from shared.logs import append_keys
from shared.naming import KEEP_TAG, MANAGED_TAG, MANAGED_VALUE
from shared.platform.port import EndpointInfo, ProvisioningState
from shared.runs import RunRecord, RunState, RunVersion, age_s, now, utcnow
from shared.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    endpoint: str
    action: str  # deleted | would_delete | announced | would_announce | kept | failed | gone
    reason: str
    run_id: str = ""
    orphans: tuple[str, ...] = ()  # orphan deployments deleted on a kept endpoint
    deletion_due_at: str = ""  # announced: when the endpoint is deleted unless someone calls it


# The reason a failed delete gives: it may have taken effect all the same. With the note written
# right before the delete (action "deleting"), it shows that the sweep had begun a deletion.
_DELETE_FAILED = "delete failed"


def managed(endpoint: EndpointInfo) -> bool:
    return endpoint.tags.get(MANAGED_TAG) == MANAGED_VALUE


def _age_s(created_at: str | None) -> float:
    return age_s(created_at or "")  # unknown age: infinite, so the grace period cannot protect it


def _run_for(mine: list[RunRecord]) -> RunRecord | None:
    """Of an endpoint's runs, the one that owns it now: mid-rollout first, else the live one, else the most recent.

    A later run that ended without the traffic (not promoted, rolled back) does not own it: the
    live run is the one a deletion retires.
    """
    rolling = [r for r in mine if r.state.rolling_out]
    live = [r for r in mine if r.state is RunState.LIVE]
    return (rolling or live or sorted(mine, key=lambda r: r.updated_at))[-1] if mine else None


def _live_since(run: RunRecord) -> str:
    """When the run went live: an endpoint is idle only after a whole window in which nobody called it."""
    return next((entry["at"] for entry in reversed(run.history) if entry["state"] == RunState.LIVE), "")


def _probes(mine: list[RunRecord], window_s: float) -> int:
    """Requests ftpilot itself sent an endpoint in the window (smoke tests, the promotion gate), from its runs.

    They are in the platform's request count too, and must not keep an endpoint nobody else
    calls alive. Only answered requests are recorded, so the discount can fall short (and an
    endpoint live one more window), never delete one that a client used.
    """
    return sum(r.probe_requests for r in mine if age_s(r.probed_at) <= window_s)


def _instances(run: RunRecord | None, services: Services) -> tuple[str, int]:
    """The run's deployment's instance type and count (the settings' for a run that has none on record)."""
    settings = services.settings
    instance_type = (run.instance_type if run else "") or settings.inference_instance_type
    return instance_type, (run.instance_count if run else 0) or settings.inference_instance_count


def saves_per_day(run: RunRecord | None, services: Services) -> float | None:
    """USD a day that deleting the run's deployment saves, at its instance type and count (None: no price)."""
    instance_type, count = _instances(run, services)
    price = services.settings.instance_prices.get(instance_type)
    return None if price is None else round(price * count * 24, 2)


def _idle(run: RunRecord | None, endpoint: str, services: Services, **extra: object) -> dict[str, object]:
    """What the idle events carry: the endpoint, the window and what the deletion saves."""
    settings = services.settings
    instance_type, count = _instances(run, services)
    return {
        "endpoint": endpoint,
        "idle_window_s": settings.idle_window_s,
        "instance_type": instance_type,
        "instance_count": count,
        "usd_per_day": saves_per_day(run, services),
        "prices_read_on": settings.prices_read_on,
        **extra,
    }


def _savings(run: RunRecord | None, services: Services) -> str:
    saved = saves_per_day(run, services)
    return "" if saved is None else f"; saves ${saved:,.2f} a day"


def _decide(
    endpoint: EndpointInfo, run: RunRecord | None, services: Services, dry_run: bool, mine: list[RunRecord]
) -> Decision:
    """Keep, announce, or delete one endpoint.

    An endpoint nobody but ftpilot called for the idle window less the notice period is
    announced (``idle_deletion_scheduled``) and kept; it is deleted once the notice period
    has passed with no call in the whole window. A call after the notice withdraws it. An
    endpoint with no run on record has nobody to tell, and is deleted after the window.
    """
    settings = services.settings
    run_id = run.run_id if run else ""
    window, notice = settings.idle_window_s, settings.idle_notice
    if endpoint.tags.get(KEEP_TAG, "").lower() in ("1", "true", "yes"):
        return Decision(endpoint.name, "kept", f"opted out with the {KEEP_TAG} tag", run_id)
    if _age_s(endpoint.created_at) < settings.cleanup_grace_s:
        return Decision(endpoint.name, "kept", f"younger than the {settings.cleanup_grace_s} s grace period", run_id)
    if run is not None and run.state.rolling_out:
        return Decision(endpoint.name, "kept", f"run {run.run_id} is mid-rollout ({run.state})", run_id)
    announce = run is not None and notice > 0
    quiet_s = window - notice if announce else window
    if run is not None and run.state is RunState.LIVE and age_s(_live_since(run)) < quiet_s:
        return Decision(endpoint.name, "kept", f"live for less than the {window} s idle window", run_id)
    requests = services.platform.endpoint_requests(endpoint.name, window)  # one query answers both windows
    probes = _probes(mine, quiet_s)
    served = requests.within(quiet_s) - probes
    if served > 0:
        return Decision(endpoint.name, "kept", f"served {served} requests in the last {quiet_s} s", run_id)
    if announce and run is not None and not run.idle_notice_at:
        due = (utcnow() + timedelta(seconds=notice)).isoformat(timespec="seconds")
        action = "would_announce" if dry_run else "announced"
        reason = f"no requests in the last {quiet_s} s; deletion announced for {due}{_savings(run, services)}"
        return Decision(endpoint.name, action, reason, run_id, deletion_due_at=due)
    if announce and run is not None and age_s(run.idle_notice_at) < notice:
        due = (datetime.fromisoformat(run.idle_notice_at) + timedelta(seconds=notice)).isoformat(timespec="seconds")
        return Decision(endpoint.name, "kept", f"deletion announced for {due}", run_id, deletion_due_at=due)
    if quiet_s != window:
        probes = _probes(mine, window)
        served = requests.within(window) - probes
        if served > 0:  # calls from before the notice: it was idle long enough to announce, not yet to delete
            return Decision(endpoint.name, "kept", f"served {served} requests in the last {window} s", run_id)
    idle = f"no requests in the last {window} s"
    if probes:
        idle += f" but ftpilot's own {probes} (smoke test and promotion gate)"
    idle += _savings(run, services)
    return Decision(endpoint.name, "would_delete", idle, run_id)


def _delete(would: Decision, services: Services, lease: LeaseVersion) -> tuple[Decision, RunVersion | None]:
    """Delete what ``_decide`` would, under the endpoint's lease, after one more look at its runs.

    ``lease``: the endpoint's lease as the sweep read it at its start, to take it without a read.
    Returns the decision and, once the run's note says the delete is begun, the run as written
    then, so the decision's own write needs no read.
    """
    endpoint, idle, run_id = would.endpoint, would.reason, would.run_id
    noted: RunVersion | None = None
    with services.leases.holding(endpoint, f"sweep:{uuid.uuid4().hex[:12]}", known=lease) as held:
        if not held:
            return Decision(endpoint, "kept", "a rollout holds or waits for the endpoint", run_id), None
        try:
            runs = list(services.runs.versions(endpoint=endpoint))
            rolling = [r.run_id for r, _ in runs if r.state.rolling_out]
            if rolling:
                return Decision(endpoint, "kept", f"run {rolling[0]} started rolling out", rolling[0]), None
            if run_id:  # first the note, so a lost answer to the delete still reads as the sweep's
                noted = services.runs.update_version(
                    run_id,
                    lambda r: replace(r, sweep_note=_note("deleting", idle)),
                    known=next((v for v in runs if v[0].run_id == run_id), None),
                )
            services.platform.begin_delete_endpoint(endpoint)
        except Exception as error:
            reason = f"{_DELETE_FAILED} ({type(error).__name__}: {error}); retried next tick"
            return Decision(endpoint, "failed", reason, run_id), noted
    return Decision(endpoint, "deleted", idle, run_id), noted


def _gone(endpoint: str, run: RunRecord | None, what: str) -> Decision:
    """The decision on an endpoint that is being deleted or gone (``what`` says which), for its run.

    A live run there is retired: as an idle deletion (``deleted``) when its note shows the sweep
    had begun one, whose answer was lost; otherwise someone else deleted the endpoint (``gone``).
    """
    run_id = run.run_id if run else ""
    if run is not None and run.state is RunState.LIVE:
        action, _, reason = _last_note(run).partition(": ")
        if action == "deleting":
            return Decision(endpoint, "deleted", f"{reason} (the sweep that began it lost the answer)", run_id)
        if action == "failed" and reason.startswith(_DELETE_FAILED):
            return Decision(endpoint, "deleted", f"an earlier sweep's delete took effect ({reason})", run_id)
        return Decision(endpoint, "gone", f"{what}, deleted outside ftpilot", run_id)
    return Decision(endpoint, "gone", what, run_id)


def _vanished(run: RunRecord, services: Services) -> Decision | None:
    """The decision on a live run whose endpoint the listing lacked; None if it exists after all.

    A listing is a moment: the endpoint may have been created since, so it is read once more.
    """
    endpoint = services.platform.get_endpoint(run.endpoint)
    if endpoint is None:
        return _gone(run.endpoint, run, "is gone")
    if endpoint.state is ProvisioningState.DELETING:
        return _gone(run.endpoint, run, "is being deleted")
    return None


def _delete_orphans(endpoint: EndpointInfo, services: Services, lease: LeaseVersion) -> tuple[str, ...]:
    """Deployments on a kept endpoint that no live or rolling-out run owns, with no traffic, past the grace.

    The run records are read only when the listing shows a candidate (most endpoints have just
    their live deployment), and then under the endpoint's lease.
    """
    candidates = [
        d.name
        for d in services.platform.list_deployments(endpoint.name)
        if not endpoint.traffic.get(d.name)
        and d.state is not ProvisioningState.DELETING  # asked already
        and _age_s(d.created_at) >= services.settings.cleanup_grace_s
    ]
    if not candidates:
        return ()
    with services.leases.holding(endpoint.name, f"sweep:{uuid.uuid4().hex[:12]}", known=lease) as held:
        if not held:
            return ()
        runs = services.runs.where("endpoint", endpoint.name)
        owned = {r.deployment for r in runs if r.state.rolling_out or r.state is RunState.LIVE}
        deleted = tuple(name for name in candidates if name not in owned)
        for name in deleted:
            services.platform.begin_delete_deployment(endpoint.name, name)
    if deleted:
        log.info("cleanup: %s: deleted orphan deployments %s", endpoint.name, ", ".join(deleted))
    return deleted


def _news(decision: Decision, run: RunRecord) -> bool:
    """Whether the run record should hear of ``decision``.

    A kept endpoint's record is rewritten only when the reason for keeping it changes (counts
    aside): otherwise a fleet of busy endpoints costs two table round trips each on every tick,
    and each write can race the rollout worker's updates. The note's time says since when.
    """
    if decision.action == "gone":  # only a live run has anything to learn from it
        return run.state is RunState.LIVE
    if decision.action != "kept":
        return True
    return _shape(_last_note(run)) != _shape(f"{decision.action}: {decision.reason}")


def _note(action: str, reason: str) -> str:
    """A run record's ``sweep_note``: when, then what the sweep did there and why."""
    return f"{now()} sweep: {action}: {reason}"


def _last_note(run: RunRecord) -> str:
    """What the run's ``sweep_note`` says after its time: "<action>: <reason>"."""
    return run.sweep_note.partition(" sweep: ")[2]


def _shape(note: str) -> str:
    return re.sub(r"\d+", "#", note)


def _record(decision: Decision, services: Services, known: RunVersion) -> None:
    """Write the decision to its run: the note always; the notice and the deletion with their events.

    ``known``: the run as the sweep read it, with its ETag, so the write needs no read first
    unless the run changed since (or the decision is about another run).
    """
    endpoint = decision.endpoint
    if not decision.run_id:
        return
    note = _note(decision.action, decision.reason)

    def change(run: RunRecord) -> RunRecord | None:
        if decision.action == "gone":
            if run.state is not RunState.LIVE:
                return None
            why = f"endpoint {endpoint} {decision.reason}"
            return replace(run.moved(RunState.RETIRED, why, reason=why), sweep_note=note)
        if decision.action == "announced" and not run.idle_notice_at:
            noticed = replace(run, idle_notice_at=now(), sweep_note=note)
            idle = _idle(run, endpoint, services, deletion_due_at=decision.deletion_due_at)
            kind = lifecycle.IDLE_DELETION_SCHEDULED
            return with_event(
                noticed,
                event(
                    noticed,
                    kind,
                    event_id=notice_id(noticed, kind, noticed.idle_notice_at),
                    time=noticed.idle_notice_at,
                    idle=idle,
                ),
            )
        if decision.action == "deleted":
            idle = _idle(run, endpoint, services)
            if run.state is not RunState.LIVE:  # nothing to retire; the deletion is news all the same
                kept = replace(run, sweep_note=note)
                kind = lifecycle.IDLE_DELETED
                stamp = now()
                return with_event(kept, event(kept, kind, event_id=notice_id(kept, kind, stamp), time=stamp, idle=idle))
            why = f"endpoint {endpoint} deleted: {decision.reason}"
            retired = replace(run.moved(RunState.RETIRED, why, reason=why), sweep_note=note)
            return with_event(retired, event(retired, lifecycle.IDLE_DELETED, idle=idle))
        if decision.action == "kept" and run.idle_notice_at and decision.reason.startswith("served"):
            return replace(run, idle_notice_at="", sweep_note=f"{note}; the announced deletion is withdrawn")
        return replace(run, sweep_note=note)

    services.runs.update(decision.run_id, change, known=known if known[0].run_id == decision.run_id else None)


def sweep(services: Services, dry_run: bool | None = None) -> list[Decision]:
    """One tick of the idle sweep; returns every decision, for logs and the CLI."""
    dry_run = services.settings.cleanup_dry_run if dry_run is None else dry_run
    listed = services.platform.list_endpoints()
    endpoints = [e for e in listed if managed(e)]
    by_endpoint: dict[str, list[RunRecord]] = {}
    etags: dict[str, str] = {}
    for record, etag in services.runs.versions():
        by_endpoint.setdefault(record.endpoint, []).append(record)
        etags[record.run_id] = etag
    leases = services.leases.versions()

    def one(endpoint: EndpointInfo) -> Decision:
        mine = by_endpoint.get(endpoint.name, [])
        run = _run_for(mine)
        if endpoint.state is ProvisioningState.DELETING:  # what is left to do there is retire its live run
            run = next((r for r in mine if r.state is RunState.LIVE), run)
        with append_keys(endpoint=endpoint.name, run_id=run.run_id if run else None):
            return _sweep_one(endpoint, run, mine)

    def _sweep_one(endpoint: EndpointInfo, run: RunRecord | None, mine: list[RunRecord]) -> Decision:
        lease = leases.get(endpoint.name, (None, ""))  # none on record: known to be absent
        known = (run, etags[run.run_id]) if run else None
        try:
            if endpoint.state is ProvisioningState.DELETING:
                decision = _gone(endpoint.name, run, "is being deleted")
            else:
                decision = _decide(endpoint, run, services, dry_run, mine)
            if decision.action == "would_delete" and not dry_run:
                decision, noted = _delete(decision, services, lease)
                known = noted or known
            elif decision.action == "kept" and not dry_run:
                decision = replace(decision, orphans=_delete_orphans(endpoint, services, lease))
        except Exception as error:  # one endpoint's trouble must not stop the sweep
            decision = Decision(endpoint.name, "failed", f"{type(error).__name__}: {error}", run.run_id if run else "")
        return _told(decision, run, known)

    def _told(decision: Decision, run: RunRecord | None, known: RunVersion | None) -> Decision:
        """The decision, written to its run when that is news there, and logged.

        ``known``: the run as last read or written, with its ETag, so the write needs no read.
        """
        log.info("cleanup: %s %s: %s", decision.endpoint, decision.action, decision.reason)
        if not dry_run and run is not None and known is not None and _news(decision, run):
            try:
                _record(decision, services, known)
            except Exception as error:  # one run's trouble must not stop the sweep; the next tick decides again
                log.warning("cleanup: run %s did not hear of it: %s: %s", run.run_id, type(error).__name__, error)
        return decision

    with ThreadPoolExecutor(max_workers=services.settings.cleanup_concurrency) as pool:
        decisions = list(pool.map(one, endpoints))
    names = {e.name for e in listed}
    vanished = [r for name, runs in by_endpoint.items() if name not in names for r in runs if r.state is RunState.LIVE]
    for run in vanished:  # seldom any: a live run's endpoint is listed unless it was deleted
        with append_keys(endpoint=run.endpoint, run_id=run.run_id):
            try:
                decision = _vanished(run, services)
            except Exception as error:  # its note is left as it is: the next tick reads the endpoint again
                log.warning("cleanup: %s: cannot read it: %s: %s", run.endpoint, type(error).__name__, error)
                decisions.append(Decision(run.endpoint, "failed", f"{type(error).__name__}: {error}", run.run_id))
                continue
            if decision is not None:
                decisions.append(_told(decision, run, (run, etags[run.run_id])))
    return decisions
