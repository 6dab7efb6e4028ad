"""The CLI as a user runs it: a real process, configured only by what the test passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.paths import REPO

if TYPE_CHECKING:
    from shared.config import Settings

# The settings the tests' own storage names live in (and the one-sweep idle deletion); the rest keep defaults.
TEST_SETTINGS = (
    "storage",
    "intake_container",
    "runs_table",
    "rollout_queue",
    "events_queue",
    "data_dir",
    "idle_notice_s",
)


def console_command() -> Path:
    """The ``ftpilot`` command ``pip install -e .`` (``make setup``) put beside this interpreter."""
    return Path(sys.executable).parent / "ftpilot"


def run_cli(cwd: Path, *args: str, console: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m shared.cli ARGS`` (or, with ``console``, ``ftpilot ARGS``) in ``cwd`` (no
    local.settings.json there), with no FTPILOT_* or HF_* settings from this shell but those in ``env``."""
    environment = cli_environment(**env)
    if console:
        environment.pop("PYTHONPATH")  # the installed command finds the package on its own
    command = [str(console_command())] if console else [sys.executable, "-m", "shared.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_environment(**env: str) -> dict[str, str]:
    """This shell's environment without its FTPILOT_* or HF_* settings, plus ``env``, finding the repository's code."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("FTPILOT_", "HF_"))}
    return environment | {"PYTHONPATH": str(REPO), **env}


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings``' storage names as the app settings a CLI process reads."""
    return {f"FTPILOT_{name.upper()}": str(getattr(settings, name)) for name in TEST_SETTINGS}
