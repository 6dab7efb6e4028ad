"""The Function App: one blueprint per trigger, all logic in ``shared``."""

import azure.functions as func

from functions.intake import bp as intake

app = func.FunctionApp()
app.register_functions(intake)
