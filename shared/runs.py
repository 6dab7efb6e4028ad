"""Run records: where every dataset's run stands, in Azure Table Storage (Azurite locally).

One entity per run, keyed by the run id (derived from the content hash, so a redelivered
trigger finds the same row). Every change is a read-modify-write guarded by the entity's
ETag: two workers that race never overwrite each other; the loser re-reads and re-decides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)

PARTITION = "run"
HISTORY_LIMIT = 40
_JSON_FIELDS = ("parameters", "metrics", "history", "duplicates")


class RunState(StrEnum):
    RECEIVED = "received"
    INVALID = "invalid"
    SUBMITTED = "submitted"
    SUBMIT_FAILED = "submit_failed"
    TRAINING = "training"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    REGISTERED = "registered"
    DEPLOYING = "deploying"
    SMOKE_TESTING = "smoke_testing"
    PROMOTING = "promoting"
    LIVE = "live"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def age_s(stamp: str) -> float:
    """Seconds since an ISO timestamp written by ``now()`` (infinite when unset)."""
    if not stamp:
        return float("inf")
    return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()


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
    report: str = ""
    train_path: str = ""
    test_path: str = ""
    job_name: str = ""
    base_model: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    endpoint: str = ""
    deployment: str = ""
    reason: str = ""
    last_error: str = ""
    phase_started_at: str = ""
    poll_token: str = ""
    poll_due_at: str = ""
    sweep_note: str = ""
    duplicates: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    history: list[dict[str, str]] = field(default_factory=list)

    def moved(self, state: RunState, note: str = "", **changes: Any) -> RunRecord:
        """A copy in ``state`` with ``changes`` applied and the step appended to its history."""
        stamp = now()
        entry = {"at": stamp, "state": str(state)}
        if note:
            entry["note"] = note
        history = [*self.history, entry][-HISTORY_LIMIT:]
        return replace(self, state=state, updated_at=stamp, history=history, **changes)

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
        return cls(**values)


class RunStore:
    """Read and change run records with optimistic concurrency."""

    def __init__(self, table: TableClient, attempts: int = 8) -> None:
        self._table = table
        self._attempts = attempts

    def claim(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Create ``record`` unless its run exists; return the stored record and whether it is new."""
        from azure.core.exceptions import ResourceExistsError

        try:
            self._table.create_entity(record.to_entity())
        except ResourceExistsError:
            existing = self.get(record.run_id)
            if existing is None:  # deleted between the two calls: try again
                return self.claim(record)
            return existing, False
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

    def update(self, run_id: str, change: Callable[[RunRecord], RunRecord | None]) -> RunRecord:
        """Apply ``change`` to the current record and store it if nobody changed it meanwhile.

        ``change`` returns the new record, or None to leave it alone; it may run more than
        once (after a lost race), so it must only decide from the record it is given.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(self._attempts):
            current, etag = self._read(run_id)
            if current is None:
                raise KeyError(f"run {run_id!r} has no record")
            updated = change(current)
            if updated is None or updated == current:
                return current
            try:
                self._table.update_entity(
                    updated.to_entity(),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                log.info("run %s changed under us; re-reading", run_id)
                continue
            return updated
        raise RuntimeError(f"run {run_id!r}: gave up after {self._attempts} concurrent updates")

    def all(self) -> Iterable[RunRecord]:
        for entity in self._table.query_entities(f"PartitionKey eq '{PARTITION}'"):
            yield RunRecord.from_entity(entity)
