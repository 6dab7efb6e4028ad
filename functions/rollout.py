"""Run events in, rollout steps out: an Event Grid trigger that queues, and the queue workers."""

from __future__ import annotations

from typing import Any

import azure.functions as func

bp = func.Blueprint()


def event_payload(event: func.EventGridEvent | func.CloudEvent) -> dict[str, Any]:
    """The delivered event as the JSON it arrived as (the host picks the class by its schema)."""
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "time": event.time.isoformat() if event.time else None,
            "subject": event.subject,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }


@bp.function_name("run_events")
@bp.event_grid_trigger(arg_name="event")
def run_events(event: func.EventGridEvent) -> None:
    from shared.rollout import accept_event
    from shared.services import get_services

    accept_event(event_payload(event), get_services())


@bp.function_name("rollout")
@bp.queue_trigger(arg_name="message", queue_name="%FTPILOT_ROLLOUT_QUEUE%", connection="FTPILOT_STORAGE")
def rollout(message: func.QueueMessage) -> None:
    from shared.rollout import advance
    from shared.services import get_services

    advance(message.get_body(), get_services())


@bp.function_name("rollout_poison")
@bp.queue_trigger(arg_name="message", queue_name="%FTPILOT_ROLLOUT_QUEUE%-poison", connection="FTPILOT_STORAGE")
def rollout_poison(message: func.QueueMessage) -> None:
    from shared.rollout import give_up
    from shared.services import get_services

    give_up(message.get_body(), get_services())
