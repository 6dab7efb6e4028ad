"""Lifecycle events: what ftpilot tells the world about a run, as CloudEvents 1.0.

Every change of state that someone would want to hear of without polling ``status`` makes one
event, ``ftpilot.run.<what>``. The event is written into the run record's ``unsent`` list
in the same conditional write as the change itself (``RunStore``'s announcer), and sent from
there by ``shared.publish``, so publishing can neither block a run nor be lost with a worker.

An event's id is derived from the run and the transition (``<run id>.<state>``, with the
occurrence appended for a state reached a second time), and stays the same on every retried
send, so a receiver deduplicates on it. Keys never appear in an event: the data carries where
the model serves (endpoint, scoring URI, model id), not how to authenticate to it.

The data of every event has the same shape: ``run_id``, ``dataset`` and ``state`` always,
then whichever of ``DATA_FIELDS`` the run has, plus what the event adds (``limit`` for a
refusal, ``idle`` for an idle deletion). The README documents each type with a sample.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.runs import RunRecord, RunState

TYPE_PREFIX = "ftpilot.run."
SPEC_VERSION = "1.0"

# The event a change into each of these states makes; other states make none.
TRANSITION_EVENTS: dict[RunState, str] = {
    RunState.SUBMITTED: "submitted",
    RunState.INVALID: "invalid",
    RunState.SUBMIT_FAILED: "submit_failed",
    RunState.REFUSED: "refused",
    RunState.FAILED: "failed",
    RunState.CANCELED: "canceled",
    RunState.LIVE: "live",
    RunState.NOT_PROMOTED: "not_promoted",
    RunState.ROLLED_BACK: "rolled_back",
    RunState.SUPERSEDED: "superseded",
    RunState.RETIRED: "retired",
}
# Not changes of state: the idle sweep's notice, and the deletion that retires the run.
IDLE_DELETION_SCHEDULED = "idle_deletion_scheduled"
IDLE_DELETED = "idle_deleted"
EVENT_TYPES = (*TRANSITION_EVENTS.values(), IDLE_DELETION_SCHEDULED, IDLE_DELETED)

DATA_FIELDS = (
    "reason",
    "report",
    "job_name",
    "base_model",
    "model_name",
    "model_version",
    "model_id",
    "endpoint",
    "deployment",
    "scoring_uri",
)


def _occurrence(record: RunRecord, state: RunState) -> int:
    """How many times the run has moved into ``state`` (notes that stay in a state do not count)."""
    count, previous = 0, ""
    for entry in record.history:
        if entry["state"] == state and previous != state:
            count += 1
        previous = entry["state"]
    return max(count, 1)


def transition_id(record: RunRecord) -> str:
    """The id of the event for the change that brought ``record`` into its state."""
    occurrence = _occurrence(record, record.state)
    return f"{record.run_id}.{record.state}" + (f".{occurrence}" if occurrence > 1 else "")


def data_of(record: RunRecord, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"run_id": record.run_id, "dataset": record.dataset, "state": str(record.state)}
    data.update({name: getattr(record, name) for name in DATA_FIELDS if getattr(record, name)})
    if record.promotion and record.state in (RunState.LIVE, RunState.NOT_PROMOTED):
        data["promotion"] = record.promotion
    data.update(extra)
    return data


def event(record: RunRecord, kind: str, *, event_id: str = "", time: str = "", **extra: Any) -> dict[str, Any]:
    """An unsent entry: the event (without the envelope ``shared.publish`` adds when sending) and its delivery.

    ``time``: when it happened, for an event that is not a change of state (default: the record's last change).
    """
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown lifecycle event {kind!r}")
    return {
        "id": event_id or transition_id(record),
        "type": TYPE_PREFIX + kind,
        "subject": record.dataset,
        "time": time or record.updated_at,
        "data": data_of(record, **extra),
        "sent": [],  # the sinks that have it
        "attempts": 0,
        "due_at": "",
        "error": "",
        "claim": "",  # the sender holding it (``shared.publish``)
    }


def notice_id(record: RunRecord, kind: str, stamp: str) -> str:
    """The id of an event that is not a change of state, unique per ``stamp`` (when it was decided)."""
    return f"{record.run_id}.{kind}.{re.sub(r'[^0-9]', '', stamp)}"


def with_event(record: RunRecord, entry: dict[str, Any]) -> RunRecord:
    """``record`` with ``entry`` among its unsent events, unless an event of that id is there already."""
    if any(pending["id"] == entry["id"] for pending in record.unsent):
        return record
    return replace(record, unsent=[*record.unsent, entry])


class Lifecycle:
    """The run store's announcer: a change into a state of ``TRANSITION_EVENTS`` adds its event to the unsent ones.

    A step that wants a more specific event for its change (a refusal with its limit, a
    deletion by the idle sweep) adds it itself, under the transition's id; that one stands.
    ``nudge`` is told the run id once the record with a new event is stored (it queues the send).
    """

    def __init__(self, nudge: Callable[[str], None]) -> None:
        self._nudge = nudge

    def announce(self, before: RunRecord | None, after: RunRecord) -> RunRecord:
        if before is not None and before.state is after.state:
            return after
        kind = TRANSITION_EVENTS.get(after.state)
        return after if kind is None else with_event(after, event(after, kind))

    def announced(self, record: RunRecord) -> None:
        self._nudge(record.run_id)
