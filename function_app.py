"""The Function App: one blueprint per trigger, all logic in ``shared``."""

import azure.functions as func

from functions.cleanup import bp as cleanup
from functions.intake import bp as intake
from functions.lifecycle_events import bp as lifecycle_events
from functions.reconcile import bp as reconcile
from functions.rollout import bp as rollout
from shared.logs import install as structured_logs

structured_logs()

app = func.FunctionApp()
for blueprint in (intake, rollout, lifecycle_events, cleanup, reconcile):
    app.register_functions(blueprint)
