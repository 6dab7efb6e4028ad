"""Benchmarks, and what they share: measuring a command from outside and writing docs/benchmarks.md.

Each benchmark is a module (``python -m bench.<name>``) that owns one ``## `` section of
docs/benchmarks.md and rewrites only what lies between its markers
``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``, so hand-written text
around them and other benchmarks' sections stay as they are.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stdout: bytes


def measure(command: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> Measurement:
    """Run ``command`` to completion; wall time and peak RSS as the kernel saw them from outside.

    ``os.wait4`` returns the child's own resource usage, so each run is measured alone
    (unlike ``RUSAGE_CHILDREN``, which keeps the maximum over every child ever waited for).
    The interpreter start-up and imports are part of the time, as for a user.
    """
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE) as process:
        started = time.perf_counter()
        stdout = process.stdout.read() if process.stdout else b""
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return Measurement(wall, usage.ru_maxrss * scale, process.returncode, stdout)


def machine() -> str:
    """One line about where numbers were taken, for the docs."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0])
        memory = f", {kib / 1024**2:.0f} GiB RAM"
    load = f", load average {os.getloadavg()[0]:.2f} at start" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{memory}{load}; "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def rewrite_section(name: str, title: str, body: str, path: Path = DOCS) -> None:
    """Replace what is between this benchmark's markers; add the section (and the file) if missing."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
