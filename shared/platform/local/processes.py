"""Child processes of the local workspace: started detached, recognised later by pid and start time.

Training jobs, routers and deployment servers outlive the call that started them (and may be
checked on by another process, after a restart), so each is known by a ``Proc``: its pid plus the
time the OS says it started. A pid alone would lie once the OS reuses it for something else.
Children run in their own session, so a Ctrl-C in the terminal of whoever started them does not
reach them; ``stop`` ends them (and their own children) on purpose.

Children read their configuration as a fresh ``Settings()`` from ``FTPILOT_*`` variables that
``child_env`` derives from the parent's ``Settings`` object, so settings built in code (tests, the
local host) reach them as well as environment ones, and secrets never land in a file or an argv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.config import Settings

REPO = Path(__file__).resolve().parents[3]
# A start time read twice for the same process agrees far more closely than this.
START_TIME_TOLERANCE_S = 0.01
STOP_GRACE_S = 10.0

# Popen objects of children this process started, so their exit status is collected (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Proc:
    """A process as recorded in the state database."""

    pid: int
    started: float

    @classmethod
    def from_row(cls, pid: int | None, started: float | None) -> Proc | None:
        return None if pid is None or started is None else cls(pid, started)


def child_env(settings: Settings) -> dict[str, str]:
    """This environment, with ``FTPILOT_*`` replaced by ``settings`` and nothing allowed to phone home.

    The local workspace works offline: Hugging Face loads only what is on disk, and MLflow's usage
    telemetry stays off.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("FTPILOT_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"FTPILOT_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def spawn(module: str, args: list[str], log: Path, settings: Settings) -> Proc:
    """Start ``python -m module *args`` detached, output appended to ``log``, working in ``log``'s folder."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=log.parent,
            env=child_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[child.pid] = child
    try:
        return Proc(child.pid, psutil.Process(child.pid).create_time())
    except psutil.NoSuchProcess:  # already gone: the caller's liveness check will say so
        return Proc(child.pid, 0.0)


def _process(proc: Proc) -> psutil.Process | None:
    """The live process ``proc`` recorded, or None (exited, a zombie, or its pid reused)."""
    child = _children.get(proc.pid)
    if child is not None and child.poll() is not None:
        _children.pop(proc.pid, None)
        return None
    try:
        process = psutil.Process(proc.pid)
        if abs(process.create_time() - proc.started) > START_TIME_TOLERANCE_S:
            return None
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except psutil.Error:
        return None


def alive(proc: Proc | None) -> bool:
    return proc is not None and _process(proc) is not None


def stop(proc: Proc | None, grace_s: float = STOP_GRACE_S) -> None:
    """Terminate ``proc`` and its descendants, killing what is still there after ``grace_s``."""
    process = None if proc is None else _process(proc)
    if process is None:
        return
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.Error:
        family = [process]
    for member in family:
        with suppress(psutil.Error):
            member.terminate()
    _, left = psutil.wait_procs(family, timeout=grace_s)
    for member in left:
        with suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(left, timeout=grace_s)
    child = _children.pop(process.pid, None)
    if child is not None:
        child.wait()


def log_tail(log: Path, lines: int = 5) -> str:
    """The last non-blank lines of a child's log: for a crash, the end of its traceback."""
    try:
        with log.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 16384))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {log})"
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
