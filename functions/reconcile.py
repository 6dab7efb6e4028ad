"""Timer trigger: the reconciler, on the schedule in FTPILOT_RECONCILE_SCHEDULE."""

import azure.functions as func

bp = func.Blueprint()


@bp.function_name("reconcile")
@bp.timer_trigger(arg_name="timer", schedule="%FTPILOT_RECONCILE_SCHEDULE%", run_on_startup=False)
def reconcile(timer: func.TimerRequest) -> None:
    from shared.reconcile import reconcile as tick
    from shared.services import get_services

    tick(get_services())
