"""Where every dataset's run stands: the rows ``ftpilot status`` prints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.runs import RunRecord, RunState

FAILED_STATES = {RunState.INVALID, RunState.SUBMIT_FAILED, RunState.FAILED, RunState.CANCELED, RunState.ROLLED_BACK}


@dataclass(frozen=True)
class StatusRow:
    run_id: str
    dataset: str
    state: str
    job: str
    model: str
    endpoint: str
    last_activity: str
    reason: str
    metrics: dict[str, float]

    @classmethod
    def of(cls, record: RunRecord) -> StatusRow:
        reason = record.reason if record.state in FAILED_STATES else ""
        return cls(
            run_id=record.run_id,
            dataset=record.dataset,
            state=str(record.state),
            job=record.job_name,
            model=f"{record.model_name}:{record.model_version}" if record.model_name else "",
            endpoint=record.endpoint,
            last_activity=record.updated_at,
            reason=reason or record.last_error,
            metrics=dict(record.metrics),
        )


def rows(records: Iterable[RunRecord]) -> list[StatusRow]:
    """Most recent activity first."""
    return sorted((StatusRow.of(r) for r in records), key=lambda row: row.last_activity, reverse=True)


def render(table_rows: list[StatusRow]) -> Any:
    """A rich Table (printed by the CLI); long reasons wrap instead of being cut."""
    from rich.table import Table

    table = Table(title="ftpilot runs", show_lines=False)
    for column in ("run", "dataset", "state", "job", "model", "endpoint", "last activity", "reason"):
        table.add_column(column, overflow="fold")
    for row in table_rows:
        style = "red" if row.state in {str(s) for s in FAILED_STATES} else ("green" if row.state == "live" else None)
        table.add_row(
            row.run_id[:8],
            row.dataset,
            row.state,
            row.job,
            row.model,
            row.endpoint,
            row.last_activity,
            row.reason,
            style=style,
        )
    return table
