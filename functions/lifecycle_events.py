"""Queue trigger: send a run's lifecycle events (``shared.publish``)."""

import azure.functions as func

bp = func.Blueprint()


@bp.function_name("lifecycle_events")
@bp.queue_trigger(arg_name="message", queue_name="%FTPILOT_EVENTS_QUEUE%", connection="FTPILOT_STORAGE")
def lifecycle_events(message: func.QueueMessage) -> None:
    import orjson

    from shared.publish import deliver
    from shared.services import get_services

    deliver(orjson.loads(message.get_body())["run_id"], get_services())
