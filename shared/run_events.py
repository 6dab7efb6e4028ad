"""Azure ML run events, typed, from either delivery schema.

Event Grid delivers the same event as Event Grid schema (``topic``/``eventType``/``eventTime``)
or CloudEvents 1.0 (``source``/``type``/``time``), depending on the subscription. Real run
events capitalise statuses (``Completed``), pipelines carry ``runType: azureml.PipelineRun``
and each child step emits its own events; payload keys have appeared as ``runId`` and
``RunId`` over time. This module turns all of that into one ``RunEvent`` and says, with a
reason, which events ftpilot acts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The values of azure-eventgrid's SystemEventNames.MachineLearningServicesRun*EventName (a test checks).
PREFIX = "Microsoft.MachineLearningServices."
RUN_COMPLETED = PREFIX + "RunCompleted"
RUN_STATUS_CHANGED = PREFIX + "RunStatusChanged"
RUN_TYPES = {RUN_COMPLETED, RUN_STATUS_CHANGED}
PIPELINE_RUN = "azureml.pipelinerun"


class EventError(ValueError):
    """The payload is not an event we can read (not a run event we would ignore: a broken one)."""


@dataclass(frozen=True)
class RunEvent:
    id: str
    topic: str
    subject: str
    type: str
    time: str
    run_id: str = ""
    run_type: str = ""
    status: str = ""
    experiment_name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    schema: str = "eventgrid"

    @property
    def is_run_event(self) -> bool:
        return self.type in RUN_TYPES


def _insensitive(data: Mapping[str, Any]) -> dict[str, Any]:
    """Payload keys by lower-case name, so ``runId`` and ``RunId`` read the same."""
    return {str(key).lower(): value for key, value in data.items()}


def _stamp(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value or "")


def parse(raw: Mapping[str, Any]) -> RunEvent:
    """One event in Event Grid or CloudEvents schema (a single object, not the delivery array).

    The envelope is read by ``azure-eventgrid``'s ``EventGridEvent`` and ``azure-core``'s
    ``CloudEvent`` (imported here, not at start-up: 0.14 s); the payload, whose keys have
    changed case over time, is read case-insensitively.
    """
    from azure.core.messaging import CloudEvent
    from azure.eventgrid import EventGridEvent

    if not isinstance(raw, Mapping):
        raise EventError(f"an event is a JSON object, got {type(raw).__name__}")
    cloud = "specversion" in raw
    try:
        if cloud:
            event: Any = CloudEvent.from_dict(dict(raw))
            topic, kind, time = event.source, event.type, event.time
        else:
            event = EventGridEvent.from_dict(dict(raw))
            topic, kind, time = event.topic, event.event_type, event.event_time
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise EventError(f"the event is not valid {'CloudEvents' if cloud else 'Event Grid'}: {error}") from None
    if not event.id or not topic or not kind:
        raise EventError("the event lacks id, topic/source or eventType/type")
    data = event.data or {}
    if not isinstance(data, Mapping):
        raise EventError("the event's data is not an object")
    payload = _insensitive(data)
    status = str(payload.get("runstatus") or ("Completed" if kind == RUN_COMPLETED else ""))
    tags = payload.get("runtags") or {}
    return RunEvent(
        id=str(event.id),
        topic=str(topic),
        subject=str(event.subject or ""),
        type=str(kind),
        time=_stamp(time),
        run_id=str(payload.get("runid") or ""),
        run_type=str(payload.get("runtype") or ""),
        status=status,
        experiment_name=str(payload.get("experimentname") or ""),
        tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {},
        schema="cloudevents" if cloud else "eventgrid",
    )


def workspace_topic(subscription_id: str, resource_group: str, workspace: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
    )


def ignore_reason(event: RunEvent, topic: str) -> str:
    """Why ftpilot drops ``event`` without looking anything up, or '' if it might be ours.

    Resource ids are case-insensitive in Azure, so topics compare that way. An event with
    no run type is kept (the documented samples have ``null``); a child step is not.
    """
    if event.topic.lower() != topic.lower():
        return f"foreign topic {event.topic}"
    if not event.is_run_event:
        return f"not a run event ({event.type})"
    if not event.run_id:
        return "no run id in the payload"
    if event.run_type and event.run_type.lower() != PIPELINE_RUN:
        return f"a {event.run_type} (child step), not the pipeline run"
    return ""
