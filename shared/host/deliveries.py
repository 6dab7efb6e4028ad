"""Trigger payloads built the way the Python worker builds them, for the local host.

Using the worker's own converters means the functions see exactly the objects they get in
Azure, not look-alikes.
"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequest


def event_grid(event: dict[str, Any]) -> func.EventGridEvent | func.CloudEvent:
    """One element of an Event Grid delivery, as the event trigger receives it."""
    return EventGridEventInConverter.decode(Datum(json.dumps(event), "json"), trigger_metadata={})


def timer(past_due: bool = False) -> TimerRequest:
    return TimerRequest(past_due=past_due)
