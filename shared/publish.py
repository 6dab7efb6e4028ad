"""Publishing: a run's lifecycle events wait on its record (``unsent``) until every sink has taken them.

The event of a change is written with the change (``shared.lifecycle``); then the run id goes
on the events queue, and the queue function calls ``deliver``, which sends what is due to each
configured sink (``shared.sinks``) and writes back, under the record's ETag, which sinks took
which events. So publishing never blocks or fails a run: a sink that is down only leaves its
events unsent, to be tried again after an exponential backoff (``events_retry_*``), for
at most ``events_ttl_s`` from the event's time, after which the event is dropped and the drop
noted on the run. A lost queue message or a worker killed mid-send leaves the events in the
record, where the reconciler finds them (``overdue``) and queues the run again.

Delivery is at least once: a kill between a send and the write-back sends that event again on
the next try, with the same id, which is what receivers deduplicate on.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from shared.logs import append_keys
from shared.runs import RunRecord, age_s, utcnow
from shared.services import Services
from shared.sinks import SinkError, envelope

log = logging.getLogger(__name__)

# How long a sender holds the events it is sending before another may send them (it may have died).
SEND_LEASE_S = 60


@dataclass(frozen=True)
class Delivery:
    """What one ``deliver`` call did for one run."""

    run_id: str
    sent: int = 0  # events every sink now has (no longer unsent)
    waiting: int = 0  # events still in it (a sink failed, or not yet due)
    dropped: int = 0  # events given up on after ``events_ttl_s``


def nudge(services: Services, run_id: str, delay_s: float = 0) -> None:
    """Queue ``deliver`` for the run; a failed send is logged, not raised (the reconciler re-queues)."""
    try:
        services.storage.events_queue.send_message(
            orjson.dumps({"run_id": run_id}), visibility_timeout=max(0, round(delay_s)) or None
        )
    except Exception as error:
        log.warning("publish: run %s: could not queue its events (%s); the reconciler will", run_id, error)


def _due(entry: dict[str, Any], stamp: datetime) -> bool:
    return not entry.get("due_at") or datetime.fromisoformat(entry["due_at"]) <= stamp


def backoff_s(services: Services, event_id: str, attempts: int, retry_after_s: float | None) -> float:
    """Exponential backoff with jitter (deterministic per event and try), at least ``Retry-After``."""
    settings = services.settings
    ceiling = min(settings.events_retry_cap_s, settings.events_retry_base_s * 2 ** max(0, attempts - 1))
    return max(ceiling * random.Random(f"{event_id}:{attempts}").uniform(0.5, 1.0), retry_after_s or 0.0)


def _claim(services: Services, run_id: str, stamp: datetime) -> tuple[RunRecord | None, list[dict[str, Any]]]:
    """Mark the run's due events as being sent by this call, for ``SEND_LEASE_S``; return them.

    Two wake-ups for one run (a message per event, the reconciler) then send each event once:
    the second finds nothing due. A sender that dies holds its events only until the lease ends.
    """
    token = uuid.uuid4().hex
    until = (stamp + timedelta(seconds=SEND_LEASE_S)).isoformat()

    def claim(current: RunRecord) -> RunRecord | None:
        if not any(_due(entry, stamp) for entry in current.unsent):
            return None
        unsent = [{**e, "due_at": until, "claim": token} if _due(e, stamp) else e for e in current.unsent]
        return replace(current, unsent=unsent)

    try:
        record = services.runs.update(run_id, claim)
    except KeyError:  # no record: nothing to send
        return None, []
    return record, [entry for entry in record.unsent if entry.get("claim") == token]


def deliver(run_id: str, services: Services) -> Delivery:
    """Send the run's due events to every sink that lacks them; record who took what."""
    with append_keys(run_id=run_id):
        return _deliver(run_id, services)


def _deliver(run_id: str, services: Services) -> Delivery:
    sinks = services.sinks
    stamp = utcnow()
    record, due = _claim(services, run_id, stamp)
    if record is None or not due:
        return Delivery(run_id, waiting=len(record.unsent) if record else 0)
    took: dict[str, set[str]] = {}
    failed: dict[str, tuple[str, float | None]] = {}
    for sink in sinks:
        batch = [envelope(entry, services.settings.events_source) for entry in due if sink.name not in entry["sent"]]
        if not batch:
            continue
        try:
            sink.send(batch)
            delivered, error, retry_after = {event["id"] for event in batch}, "", None
        except SinkError as problem:
            delivered, error, retry_after = set(problem.delivered), str(problem), problem.retry_after_s
        except Exception as problem:  # one sink's bug must not keep the others from their events
            delivered, error, retry_after = set(), f"{sink.name}: {type(problem).__name__}: {problem}", None
        for event in batch:
            if event["id"] in delivered:
                took.setdefault(event["id"], set()).add(sink.name)
            else:
                failed[event["id"]] = (f"{sink.name}: {error}"[:500], retry_after)
    names = {sink.name for sink in sinks}
    counts = {"sent": 0, "dropped": 0}

    def write_back(current: RunRecord) -> RunRecord | None:
        counts.update(sent=0, dropped=0)
        kept, notes = [], []
        for entry in current.unsent:
            sent = sorted({*entry["sent"], *took.get(entry["id"], ())})
            if names <= set(sent):
                counts["sent"] += 1
                continue
            retry: dict[str, Any] = {}
            if entry["id"] in failed and entry.get("claim") == due[0]["claim"]:
                error, retry_after = failed[entry["id"]]
                attempts = entry["attempts"] + 1
                if age_s(entry["time"]) > services.settings.events_ttl_s:
                    counts["dropped"] += 1
                    notes.append(f"event {entry['type']} ({entry['id']}) dropped after {attempts} tries: {error}")
                    continue
                wait = timedelta(seconds=backoff_s(services, entry["id"], attempts, retry_after))
                retry = {"attempts": attempts, "due_at": (stamp + wait).isoformat(), "error": error}
            kept.append({**entry, **retry, "sent": sent})
        if kept == current.unsent:
            return None
        changed = replace(current, unsent=kept)
        for note in notes:
            changed = changed.noted(note)
        return changed

    stored = services.runs.update(run_id, write_back)
    for entry in record.unsent:
        if entry["id"] in failed:
            log.warning("publish: run %s: %s not delivered: %s", run_id, entry["type"], failed[entry["id"]][0])
    if failed and stored.unsent:  # a sink failed: try again when the first of its events falls due
        nearest = min(datetime.fromisoformat(entry["due_at"]) for entry in stored.unsent if entry.get("due_at"))
        nudge(services, run_id, (nearest - stamp).total_seconds())
    return Delivery(run_id, counts["sent"], len(stored.unsent), counts["dropped"])


def overdue(services: Services, limit: int) -> list[RunRecord]:
    """Runs with an event due now (its queue message lost, or its backoff over), at most ``limit``."""
    stamp = utcnow()
    found = []
    for record in services.runs.with_unsent():
        if any(_due(entry, stamp) for entry in record.unsent):
            found.append(record)
            if len(found) >= limit:
                break
    return found
