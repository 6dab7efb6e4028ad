"""`python -m shared.cli up` as a user runs it: a real process, stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shared.config import Settings
from shared.storage import Storage
from tests.cli_process import settings_env
from tests.paths import REPO


@pytest.mark.slow
def test_up_serves_until_ctrl_c_and_leaves_nothing_running(settings: Settings, tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FTPILOT_")}
    env |= settings_env(settings) | {"PYTHONPATH": str(REPO)}
    host = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--interval", "0.2"],
        cwd=tmp_path,  # no local.settings.json here: the environment is the whole configuration
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Press Ctrl-C" in line for line in lines):
            line = host.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        assert any(f"watching {settings.intake_container}/{settings.intake_prefix}" in line for line in lines)

        # It created what the functions need in the (already running) Azurite, and started no other.
        storage = Storage(settings)
        assert storage.container.exists()
        storage.queue.get_queue_properties()
        storage.poison_queue.get_queue_properties()
        assert not any("Azurite started" in line for line in lines)

        host.send_signal(signal.SIGINT)
        out, _ = host.communicate(timeout=60)
    finally:
        if host.poll() is None:
            host.kill()
    assert host.returncode == 0, out
    assert "nothing left running" in out
    assert "Traceback" not in out
