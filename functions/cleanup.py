"""Timer trigger: the idle-endpoint sweep, on the schedule in FTPILOT_CLEANUP_SCHEDULE."""

import azure.functions as func

bp = func.Blueprint()


@bp.function_name("cleanup")
@bp.timer_trigger(arg_name="timer", schedule="%FTPILOT_CLEANUP_SCHEDULE%", run_on_startup=False)
def cleanup(timer: func.TimerRequest) -> None:
    from shared.cleanup import sweep
    from shared.services import get_services

    sweep(get_services())
