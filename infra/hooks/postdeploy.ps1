# azd's post-deploy hook on Windows (azure.yaml): the same steps as postdeploy.sh.
$ErrorActionPreference = "Stop"
$venv = ".azure/ftpilot-hook"
if (-not (Test-Path "$venv/Scripts/python.exe")) { python -m venv $venv }
& "$venv/Scripts/python.exe" -m pip install --quiet --disable-pip-version-check -r infra/requirements.txt
& "$venv/Scripts/python.exe" -m infra.postdeploy
exit $LASTEXITCODE
