#!/bin/sh
# azd's post-deploy hook (azure.yaml): subscribe the deployed functions to Event Grid.
# A venv of its own under .azure/, so the hook never touches the app's or the developer's packages.
set -eu
venv=.azure/ftpilot-hook
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r infra/requirements.txt
exec "$venv/bin/python" -m infra.postdeploy
