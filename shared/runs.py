"""Run records: where every dataset's run stands, in Azure Table Storage (Azurite locally).

One entity per run, keyed by the run id (derived from the content hash, so a redelivered
trigger finds the same row). Every change is a read-modify-write guarded by the entity's
ETag: two workers that race never overwrite each other; the loser re-reads and re-decides.

The run's state machine is declared here once, as data (``TRANSITIONS``), and
``RunStore.update`` checks every change of state against it: an illegal one is logged and
refused, never written, whichever code path asked for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

PARTITION = "run"
HISTORY_LIMIT = 40
_JSON_FIELDS = ("parameters", "inputs", "gate", "promotion", "metrics", "history", "duplicates", "unsent")


class RunState(StrEnum):
    RECEIVED = "received"
    INVALID = "invalid"
    QUEUED = "queued"
    REFUSED = "refused"
    SUBMITTED = "submitted"
    SUBMIT_FAILED = "submit_failed"
    TRAINING = "training"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REGISTERED = "registered"
    DEPLOYING = "deploying"
    SMOKE_TESTING = "smoke_testing"
    GATING = "gating"
    PROMOTING = "promoting"
    LIVE = "live"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    NOT_PROMOTED = "not_promoted"
    SUPERSEDED = "superseded"
    RETIRED = "retired"

    @property
    def settled(self) -> bool:
        """Nothing will happen to the run unless something new arrives: terminal, or live."""
        return self in TERMINAL or self is RunState.LIVE

    @property
    def terminal(self) -> bool:
        """Nothing moves the run on from here (a re-upload may resume ``submit_failed``)."""
        return self in TERMINAL

    @property
    def failure(self) -> bool:
        """Ended without a model serving: ``reason`` says why."""
        return self in FAILURES

    @property
    def rolling_out(self) -> bool:
        """The run is changing its endpoint's deployments or traffic (it holds the endpoint's lease)."""
        return self in ROLLOUT


_S = RunState
# Every legal change of state; staying in a state (a note in the history) is always legal.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _S.RECEIVED: frozenset({_S.INVALID, _S.QUEUED, _S.REFUSED, _S.SUBMITTED, _S.SUBMIT_FAILED, _S.SUPERSEDED}),
    _S.QUEUED: frozenset({_S.SUBMITTED, _S.SUBMIT_FAILED, _S.REFUSED, _S.SUPERSEDED}),
    # A re-upload of the same content resumes a run that never trained, once what stopped it is fixed.
    _S.SUBMIT_FAILED: frozenset({_S.QUEUED, _S.SUBMITTED, _S.REFUSED}),
    _S.REFUSED: frozenset({_S.QUEUED, _S.SUBMITTED, _S.SUBMIT_FAILED}),
    _S.INVALID: frozenset(),
    _S.SUBMITTED: frozenset({_S.TRAINING, _S.SUCCEEDED, _S.FAILED, _S.CANCELED, _S.SUPERSEDED}),
    _S.TRAINING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELED, _S.SUPERSEDED}),
    _S.SUCCEEDED: frozenset({_S.REGISTERED, _S.FAILED, _S.SUPERSEDED}),
    _S.REGISTERED: frozenset({_S.DEPLOYING, _S.FAILED, _S.REFUSED, _S.SUPERSEDED}),
    _S.DEPLOYING: frozenset({_S.SMOKE_TESTING, _S.ROLLING_BACK}),
    _S.SMOKE_TESTING: frozenset({_S.GATING, _S.ROLLING_BACK}),
    _S.GATING: frozenset({_S.PROMOTING, _S.ROLLING_BACK}),
    _S.PROMOTING: frozenset({_S.LIVE, _S.ROLLING_BACK}),
    _S.ROLLING_BACK: frozenset({_S.ROLLED_BACK, _S.NOT_PROMOTED, _S.SUPERSEDED}),
    _S.LIVE: frozenset({_S.RETIRED}),
    _S.ROLLED_BACK: frozenset(),
    _S.NOT_PROMOTED: frozenset(),
    _S.SUPERSEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.RETIRED: frozenset(),
}
TERMINAL = frozenset(
    {
        _S.INVALID,
        _S.SUBMIT_FAILED,
        _S.REFUSED,
        _S.FAILED,
        _S.CANCELED,
        _S.ROLLED_BACK,
        _S.NOT_PROMOTED,
        _S.SUPERSEDED,
        _S.RETIRED,
    }
)
FAILURES = frozenset(
    {_S.INVALID, _S.SUBMIT_FAILED, _S.REFUSED, _S.FAILED, _S.CANCELED, _S.ROLLED_BACK, _S.NOT_PROMOTED}
)
ROLLOUT = frozenset({_S.DEPLOYING, _S.SMOKE_TESTING, _S.GATING, _S.PROMOTING, _S.ROLLING_BACK})
# Before training ends: a run superseded here cancels its job.
TRAINING = frozenset({_S.SUBMITTED, _S.TRAINING})
# Holding, or about to hold, one of the training slots that admission control counts.
ADMITTED = frozenset({_S.RECEIVED, _S.QUEUED, *TRAINING})


class IllegalTransition(Exception):
    """A change of state that ``TRANSITIONS`` does not allow."""


def check_transition(before: RunState, after: RunState) -> None:
    if after is not before and after not in TRANSITIONS[before]:
        raise IllegalTransition(f"{before} -> {after} is not a legal transition")


def _wall_clock() -> datetime:
    return datetime.now(UTC)


_clock: Callable[[], datetime] = _wall_clock


def use_clock(clock: Callable[[], datetime] | None) -> None:
    """Tell time by ``clock`` (None: the wall clock). Every deadline and cadence reads time here,
    so a simulation can run days of a run's life in seconds, and replay them exactly."""
    global _clock  # noqa: PLW0603 - one clock per process
    _clock = clock or _wall_clock


def utcnow() -> datetime:
    return _clock()


def now() -> str:
    return utcnow().isoformat(timespec="seconds")


def age_s(stamp: str) -> float:
    """Seconds since an ISO timestamp written by ``now()`` (infinite when unset)."""
    if not stamp:
        return float("inf")
    stamped = datetime.fromisoformat(stamp)
    if stamped.tzinfo is None:
        stamped = stamped.replace(tzinfo=UTC)
    return (utcnow() - stamped).total_seconds()


@dataclass(frozen=True)
class RunRecord:
    """Everything ftpilot knows about one run. Never holds secrets (keys stay with the platform)."""

    run_id: str
    dataset: str
    sha256: str
    state: RunState = RunState.RECEIVED
    sidecar: str = ""
    sidecar_sha256: str = ""
    source_etag: str = ""
    uploaded_at: str = ""  # the upload's last-modified time (whole seconds): the order of admission
    queued_at: str = ""  # when intake queued it (wall clock, microseconds): the order among one second's uploads
    report: str = ""
    train_path: str = ""
    test_path: str = ""
    job_name: str = ""
    base_model: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # the upload's own pipeline inputs (blob metadata)
    parameters: dict[str, Any] = field(default_factory=dict)  # every input the submitted job got
    gate: dict[str, str] = field(default_factory=dict)  # the upload's gate overrides (blob metadata)
    promotion: dict[str, Any] = field(default_factory=dict)  # the gate's verdict and headline numbers
    metrics: dict[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    model_id: str = ""  # what a deployment serves: the platform's id of the registered version
    endpoint: str = ""
    deployment: str = ""
    instance_type: str = ""  # what the deployment runs on, as ftpilot asked for it
    instance_count: int = 0
    scoring_uri: str = ""  # the endpoint's, once the run is live there
    reason: str = ""
    last_error: str = ""
    phase_started_at: str = ""
    poll_token: str = ""
    poll_due_at: str = ""
    waiting_for: str = ""
    waiting_since: str = ""
    checked_at: str = ""
    transient_errors: int = 0
    poisoned: int = 0
    replaces: str = ""
    ending: str = ""
    sweep_note: str = ""
    probe_requests: int = 0  # answered requests ftpilot sent the endpoint itself (the idle sweep discounts them)
    probed_at: str = ""
    idle_notice_at: str = ""  # when the idle sweep announced this run's endpoint's deletion ('' : not announced)
    duplicates: list[str] = field(default_factory=list)
    unsent: list[dict[str, Any]] = field(default_factory=list)  # lifecycle events not yet taken by every sink
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    history: list[dict[str, str]] = field(default_factory=list)

    def moved(self, state: RunState, note: str = "", **changes: Any) -> RunRecord:
        """A copy in ``state`` with ``changes`` applied and the step appended to its history.

        A step that moves the run has succeeded, so the last error, the wait and the count of
        transient errors are cleared (unless ``changes`` sets them).
        """
        stamp = now()
        entry = {"at": stamp, "state": str(state)}
        if note:
            entry["note"] = note
        history = [*self.history, entry][-HISTORY_LIMIT:]
        cleared: dict[str, Any] = {
            "last_error": "",
            "waiting_for": "",
            "waiting_since": "",
            "transient_errors": 0,
            "poisoned": 0,
        }
        return replace(self, state=state, updated_at=stamp, history=history, **{**cleared, **changes})

    def noted(self, note: str) -> RunRecord:
        """A copy with ``note`` in its history, and nothing else changed (not even what ``moved`` clears)."""
        entry = {"at": now(), "state": str(self.state), "note": note}
        return replace(self, history=[*self.history, entry][-HISTORY_LIMIT:])

    def to_entity(self) -> dict[str, Any]:
        data = asdict(self)
        entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": data.pop("run_id")}
        for key, value in data.items():
            entity[key] = json.dumps(value) if key in _JSON_FIELDS else str(value)
        return entity

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {"run_id": entity["RowKey"]}
        for key, value in entity.items():
            if key in known and key != "run_id":
                values[key] = json.loads(value) if key in _JSON_FIELDS else value
        values["state"] = RunState(values.get("state", RunState.RECEIVED))
        for counter in ("transient_errors", "poisoned", "probe_requests", "instance_count"):
            values[counter] = int(values.get(counter) or 0)
        return cls(**values)


class Announcer(Protocol):
    """Who hears of every change a ``RunStore`` writes (``shared.lifecycle.Lifecycle``)."""

    def announce(self, before: RunRecord | None, after: RunRecord) -> RunRecord:
        """``after`` with the events of the change from ``before`` (None: a new record) added to its unsent ones."""

    def announced(self, record: RunRecord) -> None:
        """Called once ``record``, carrying events it did not have before, is stored."""


_V = TypeVar("_V")


def versions_to_try(
    read: Callable[[], tuple[_V, str]], attempts: int, known: tuple[_V, str] | None = None
) -> Iterator[tuple[_V, str, bool]]:
    """The versions a read-modify-write under an ETag decides on, one per try, at most ``attempts``.

    ``known`` (a version the caller read or wrote) comes first and saves a read; every other try
    reads afresh. The flag says the version is the caller's: it may be stale, so a write from it
    is only ever conditional, and a decision to do nothing must be made again on a fresh read.
    """
    for attempt in range(attempts):
        if attempt == 0 and known is not None:
            yield (*known, True)
        else:
            yield (*read(), False)


# A run record with the ETag it was read or written with: what ``RunStore.update(..., known=)`` takes.
RunVersion = tuple[RunRecord, str]


class RunStore:
    """Read and change run records with optimistic concurrency.

    With an ``announcer``, the events a change of state makes are written in the same entity
    write as the change itself (the record's ``unsent`` list, a transactional outbox), so there is no moment at which
    a run has moved and its event is lost, or an event was sent for a change never stored.
    """

    def __init__(self, table: TableClient, attempts: int = 8, announcer: Announcer | None = None) -> None:
        self._table = table
        self._attempts = attempts
        self._announcer = announcer

    def _announce(self, before: RunRecord | None, after: RunRecord) -> RunRecord:
        return after if self._announcer is None else self._announcer.announce(before, after)

    def _announced(self, before: RunRecord | None, after: RunRecord) -> None:
        if self._announcer is not None and len(after.unsent) > len(before.unsent if before else []):
            self._announcer.announced(after)

    def claim(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Create ``record`` unless its run exists; return the stored record and whether it is new."""
        from azure.core.exceptions import ResourceExistsError

        record = self._announce(None, record)
        try:
            self._table.create_entity(record.to_entity())
        except ResourceExistsError:
            existing = self.get(record.run_id)
            if existing is None:  # deleted between the two calls: try again
                return self.claim(record)
            return existing, False
        self._announced(None, record)
        return record, True

    def get(self, run_id: str) -> RunRecord | None:
        return self._read(run_id)[0]

    def _read(self, run_id: str) -> tuple[RunRecord | None, str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(PARTITION, run_id)
        except ResourceNotFoundError:
            return None, ""
        return RunRecord.from_entity(entity), entity.metadata["etag"]

    def update(
        self,
        run_id: str,
        change: Callable[[RunRecord], RunRecord | None],
        *,
        known: RunVersion | None = None,
    ) -> RunRecord:
        """Apply ``change`` to the current record and store it if nobody changed it meanwhile.

        See :meth:`update_version`, which also returns the ETag.
        """
        return self.update_version(run_id, change, known=known)[0]

    def update_version(
        self,
        run_id: str,
        change: Callable[[RunRecord], RunRecord | None],
        *,
        known: RunVersion | None = None,
    ) -> RunVersion:
        """Apply ``change`` to the current record and store it if nobody changed it meanwhile.

        Returns the record as stored with its ETag, for a caller that writes it again soon
        (``known=``) without reading it first.

        ``change`` returns the new record, or None to leave it alone; it may run more than
        once (after a lost race), so it must only decide from the record it is given.

        ``known``: the record and its ETag as the caller read them (``versions``). The first
        try writes from it without reading; the ETag makes that write fail if the record moved
        since, and the next try reads. What ``change`` leaves alone, or would move illegally,
        on a known record is decided again on a fresh read: it may be stale.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        for current, etag, optimistic in versions_to_try(lambda: self._read(run_id), self._attempts, known):
            if current is None:
                raise KeyError(f"run {run_id!r} has no record")
            updated = change(current)
            if updated is None or updated == current:
                if optimistic:
                    continue
                return current, etag
            try:
                check_transition(current.state, updated.state)
            except IllegalTransition as error:
                if optimistic:
                    continue
                log.error("run %s: refused to write %s", run_id, error)
                return current, etag
            updated = self._announce(current, updated)
            try:
                written = self._table.update_entity(
                    updated.to_entity(),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                log.info("run %s changed under us; re-reading", run_id)
                continue
            self._announced(current, updated)
            return updated, written["etag"]
        raise RuntimeError(f"run {run_id!r}: gave up after {self._attempts} concurrent updates")

    def all(self) -> Iterable[RunRecord]:
        return (record for record, _ in self.versions())

    def versions(self, **equal: str) -> Iterable[RunVersion]:
        """Every record (or those whose fields equal ``equal``'s) with the ETag it was read with,
        for an ``update(..., known=...)`` later. One query; a filtered one is not a scan."""
        query = f"PartitionKey eq '{PARTITION}'" + "".join(f" and {field} eq @{field}" for field in equal)
        for entity in self._table.query_entities(query, parameters=equal):
            yield RunRecord.from_entity(entity), entity.metadata["etag"]

    def where(self, field: str, value: str) -> list[RunRecord]:
        """The runs whose ``field`` equals ``value``, read now (one filtered query, not a scan)."""
        return [record for record, _ in self.versions(**{field: value})]

    def with_unsent(self) -> Iterable[RunRecord]:
        """Runs with unsent events (records written before lifecycle events existed have none)."""
        for entity in self._table.query_entities(f"PartitionKey eq '{PARTITION}' and unsent ne '[]'"):
            yield RunRecord.from_entity(entity)

    def unsettled(self) -> Iterable[RunRecord]:
        """Runs neither terminal, live nor queued, streamed page by page (the table filters them).

        Queued runs wait for admission (``shared.admission``), which finds them itself: a burst of
        a thousand uploads must not make every reconciler tick read a thousand records.
        """
        skipped = {*TERMINAL, RunState.LIVE, RunState.QUEUED}
        clauses = " and ".join(f"state ne '{state}'" for state in sorted(skipped))
        for entity in self._table.query_entities(f"PartitionKey eq '{PARTITION}' and {clauses}"):
            yield RunRecord.from_entity(entity)
