"""Where every dataset's run stands: the rows ``ftpilot status`` prints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.runs import RunRecord, RunState


@dataclass(frozen=True)
class StatusRow:
    run_id: str
    dataset: str
    state: str
    job: str
    model: str
    model_id: str
    model_version: str
    endpoint: str
    scoring_uri: str
    last_activity: str
    reason: str
    waiting_for: str
    waiting_since: str
    metrics: dict[str, float]
    promotion: dict[str, Any]

    @classmethod
    def of(cls, record: RunRecord) -> StatusRow:
        """A run's row: why it ended, if it ended; what it waits for, and since when, if it waits.

        ``last_error`` is shown only while it is news: a step that succeeds clears it.
        """
        ended = record.state.terminal or record.state is RunState.ROLLING_BACK
        reason = record.reason if ended else ""
        waits = not record.state.terminal and record.state is not RunState.LIVE
        return cls(
            run_id=record.run_id,
            dataset=record.dataset,
            state=str(record.state),
            job=record.job_name,
            model=f"{record.model_name}:{record.model_version}" if record.model_name else "",
            model_id=record.model_id,
            model_version=record.model_version,
            endpoint=record.endpoint,
            scoring_uri=record.scoring_uri if record.state is RunState.LIVE else "",
            last_activity=record.updated_at,
            reason=reason or record.last_error,
            waiting_for=record.waiting_for if waits else "",
            waiting_since=record.waiting_since if waits else "",
            metrics=dict(record.metrics),
            promotion=dict(record.promotion),
        )


def rows(records: Iterable[RunRecord]) -> list[StatusRow]:
    """Most recent activity first."""
    return sorted((StatusRow.of(r) for r in records), key=lambda row: row.last_activity, reverse=True)


def render(table_rows: list[StatusRow]) -> Any:
    """A rich Table (printed by the CLI); long reasons wrap instead of being cut."""
    from rich.table import Table

    table = Table(title="ftpilot runs", show_lines=False)
    for column in ("run", "dataset", "state", "job", "model", "endpoint", "last activity", "waiting for", "reason"):
        table.add_column(column, overflow="fold")
    for row in table_rows:
        failed = RunState(row.state).failure
        style = "red" if failed else ("green" if row.state == "live" else None)
        waiting = f"{row.waiting_for} (since {row.waiting_since})" if row.waiting_for else ""
        table.add_row(
            row.run_id[:8],
            row.dataset,
            row.state,
            row.job,
            row.model,
            f"{row.endpoint}\n{row.scoring_uri}" if row.scoring_uri else row.endpoint,
            row.last_activity,
            waiting,
            row.reason,
            style=style,
        )
    return table
