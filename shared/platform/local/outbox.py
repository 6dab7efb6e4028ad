"""Azure ML run events from the local workspace, through an outbox the local host drains.

On Azure, Event Grid tells ftpilot that a job started or ended. Locally, whoever moves a job
(the adapter starting it, the trainer finishing it, the adapter noticing it died) writes the same
event Azure would, in Event Grid schema, as one delivery (a JSON array with one event) per file
in ``data_dir/outbox/``. The local host drains the folder and hands each delivery to the event
function, as Event Grid would POST it.

What Azure sends, and so what is written here:

* the job starts running: ``RunStatusChanged`` with ``runStatus: "Running"``;
* it completes: ``RunStatusChanged`` (``Completed``) and ``RunCompleted``, two deliveries;
* it fails or is canceled: ``RunStatusChanged`` (``Failed`` / ``Canceled``).

``experimentId`` is a GUID on Azure; here it is a UUID derived from the topic and experiment name,
so every process computes the same one without asking MLflow. Files are written atomically (a
rename), named ``<time ns>-<event id>.json`` so a sorted listing is the order they happened in.
Delivery is at least once, as with Event Grid: a delivery is deleted only once the consumer acks
it, and two drainers running at once may both see it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.platform.local.layout import Layout
from shared.platform.port import JobStatus
from shared.run_events import RUN_COMPLETED, RUN_STATUS_CHANGED

RUN_TYPE = "azureml.PipelineRun"
# Azure's capitalised run statuses.
RUN_STATUS = {
    JobStatus.RUNNING: "Running",
    JobStatus.COMPLETED: "Completed",
    JobStatus.FAILED: "Failed",
    JobStatus.CANCELED: "Canceled",
}


@dataclass(frozen=True)
class OutboxDelivery:
    """One pending delivery: the JSON array Event Grid would POST. ``ack`` once it was handled."""

    path: Path
    events: list[dict[str, Any]]

    def ack(self) -> None:
        self.path.unlink(missing_ok=True)


def experiment_id(settings: Settings) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{settings.topic}/experiments/{settings.experiment_name}"))


def run_event(
    settings: Settings,
    event_type: str,
    *,
    job_name: str,
    status: JobStatus,
    tags: Mapping[str, str],
    properties: Mapping[str, str],
) -> dict[str, Any]:
    """One Azure ML run event about ``job_name`` in Event Grid schema."""
    experiment = experiment_id(settings)
    return {
        "topic": settings.topic,
        "subject": f"experiments/{experiment}/runs/{job_name}",
        "eventType": event_type,
        "eventTime": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "id": str(uuid.uuid4()),
        "data": {
            "experimentId": experiment,
            "experimentName": settings.experiment_name,
            "runId": job_name,
            "runType": RUN_TYPE,
            "runTags": dict(tags),
            "runProperties": dict(properties),
            "runStatus": RUN_STATUS[status],
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def emit_job_events(
    settings: Settings,
    *,
    job_name: str,
    status: JobStatus,
    tags: Mapping[str, str],
    properties: Mapping[str, str],
) -> None:
    """Write the deliveries Azure would send when a job enters ``status``."""
    types = [RUN_STATUS_CHANGED, RUN_COMPLETED] if status is JobStatus.COMPLETED else [RUN_STATUS_CHANGED]
    for event_type in types:
        event = run_event(settings, event_type, job_name=job_name, status=status, tags=tags, properties=properties)
        write_delivery(Layout(settings.data_dir).outbox, [event])


def write_delivery(outbox: Path, events: list[dict[str, Any]]) -> Path:
    """Publish one delivery atomically: a reader sees the whole file or none of it."""
    outbox.mkdir(parents=True, exist_ok=True)
    final = outbox / f"{time.time_ns():020d}-{events[0]['id']}.json"
    staging = outbox / f".{final.name}.tmp"
    with staging.open("w", encoding="utf-8") as file:
        json.dump(events, file)
        file.flush()
        os.fsync(file.fileno())
    staging.replace(final)
    return final


def drain_events(data_dir: Path) -> Iterator[OutboxDelivery]:
    """Pending deliveries, oldest first; each stays in the outbox until its ``ack()``."""
    outbox = Layout(data_dir).outbox
    if not outbox.is_dir():
        return
    for path in sorted(outbox.glob("[0-9]*.json")):
        try:
            events = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:  # acked by another drainer meanwhile
            continue
        yield OutboxDelivery(path, events)
