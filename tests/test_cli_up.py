"""`python -m shared.cli up` as a user runs it: a real process, stopped with Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shared import azurite
from shared.config import Settings
from shared.host.runner import storage_ports
from shared.storage import Storage
from tests.cli_process import console_command, settings_env
from tests.paths import REPO


@contextmanager
def running_up(settings: Settings, cwd, *, console: bool = False) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """``up`` with ``settings`` as its whole configuration, and the lines it printed until ready.

    ``console``: the installed ``ftpilot`` command (``make demo`` runs it), which must find the
    Function App's ``functions`` package without PYTHONPATH. Killed at the end if the test left it running.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("FTPILOT_")}
    env |= settings_env(settings) | ({} if console else {"PYTHONPATH": str(REPO)})
    command = [str(console_command())] if console else [sys.executable, "-m", "shared.cli"]
    host = subprocess.Popen(
        [*command, "up", "--interval", "0.2"],
        cwd=cwd,  # no local.settings.json here: the environment is the whole configuration
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Press Ctrl-C" in line for line in lines):
            line = host.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        yield host, lines
    finally:
        if host.poll() is None:
            host.kill()


@pytest.mark.slow
@pytest.mark.parametrize("console", [False, True], ids=["python -m shared.cli", "ftpilot"])
def test_up_serves_until_ctrl_c_and_leaves_the_azurite_it_found(settings: Settings, tmp_path, console: bool) -> None:
    with running_up(settings, tmp_path, console=console) as (host, lines):
        assert any(f"watching {settings.intake_container}/{settings.intake_prefix}" in line for line in lines)

        # It created what the functions need in the (already running) Azurite, and started no other.
        storage = Storage(settings)
        assert storage.container.exists()
        storage.queue.get_queue_properties()
        storage.poison_queue.get_queue_properties()
        assert not any("Azurite started" in line for line in lines)

        host.send_signal(signal.SIGINT)
        out, _ = host.communicate(timeout=60)
    assert host.returncode == 0, out
    # It did not start that Azurite, so it does not stop it, and says so.
    assert f"Azurite on port {storage_ports(settings.storage_account.connection_string)[0]}" in out
    assert "left running" in out and "nothing left running" not in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_up_stopped_with_sigterm_stops_the_azurite_it_started(settings: Settings, tmp_path) -> None:
    ports = (azurite.free_port(), azurite.free_port(), azurite.free_port())
    own = settings.model_copy(update={"storage": azurite.connection_string(*ports), "data_dir": tmp_path / "ws"})
    with running_up(own, tmp_path) as (host, lines):
        assert any("Azurite started" in line for line in lines), "".join(lines)
        assert all(azurite.listening(p) for p in ports)

        host.send_signal(signal.SIGTERM)  # what a service manager or `kill` sends
        out, _ = host.communicate(timeout=60)
    assert host.returncode == 0, out
    assert "with the Azurite it started; nothing left running" in out
    assert not any(azurite.listening(p) for p in ports)
    assert "Traceback" not in out
