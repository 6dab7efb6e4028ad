"""Run events built from Azure's documented samples in ../shared/fixtures/events."""

from __future__ import annotations

import copy
import json
from typing import Any

import azure.functions as func

from shared.host.deliveries import event_grid
from tests.paths import EVENTS


def sample(name: str) -> dict[str, Any]:
    (event,) = json.loads((EVENTS / name).read_text())
    return event


def run_event(
    topic: str,
    job: str,
    status: str = "Completed",
    *,
    schema: str = "eventgrid",
    run_type: str = "azureml.PipelineRun",
    event_id: str = "e1",
) -> dict[str, Any]:
    """A real sample event rewritten to name our workspace and job, with a real capitalised status."""
    kind = "RunCompleted" if status == "Completed" else "RunStatusChanged"
    event = copy.deepcopy(sample(f"{schema}.{kind}.json"))
    event["source" if schema == "cloudevents" else "topic"] = topic
    event["id"] = event_id
    event["subject"] = f"experiments/0fa9dfaa/runs/{job}"
    event["data"].update(runId=job, runType=run_type, experimentName="ftpilot-chat-completion")
    if kind == "RunStatusChanged":
        event["data"]["runStatus"] = status
    return event


def delivered(event: dict[str, Any]) -> func.EventGridEvent | func.CloudEvent:
    """The object the Python worker hands the function for this event (its own converter)."""
    return event_grid(event)
