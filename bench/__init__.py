"""Benchmarks, and what they share: measuring a command from outside, latency percentiles,
a private Azurite with the app's services on it, and writing docs/benchmarks.md.

Each benchmark is a module (``python -m bench.<name>``) that owns one ``## `` section of
docs/benchmarks.md and rewrites only what lies between its markers
``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``, so hand-written text
around them and other benchmarks' sections stay as they are. ``python -m bench`` runs them all.

The app's own modules (``shared``) are imported inside the helpers that need them, so
``import bench`` stays cheap and never skews what a benchmark measures in its own process.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.azurite import Azurite
    from shared.config import Settings
    from shared.platform.port import MLPlatform
    from shared.services import Services
    from shared.storage import Storage

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


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated between closest ranks (numpy's default).

    Targets are about the tail (p99), which a median or a mean hides.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    """Per-call wall times (seconds), summarised the way the docs tables show them."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Latency:
        return cls(len(samples), *(percentile(samples, q) for q in (50, 95, 99)), max(samples))


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A parser with what every benchmark takes (``--no-docs``), its help the module's docstring."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    return parser


def header(command: str, about: str) -> str:
    """The first lines of every section: when, how and where the numbers were taken."""
    return f"Measured {today()} with `{command}`\non {about}."


def publish(name: str, title: str, body: Sequence[str], missed: Sequence[str], met: str, *, docs: bool) -> int:
    """Print the verdict, rewrite this benchmark's section (unless ``docs`` is false), return the exit code.

    ``missed`` says what fell short, one phrase each; ``met`` is the sentence for when nothing did.
    """
    verdict = f"**Target missed**: {'; '.join(missed)}." if missed else f"Target met: {met}"
    print(verdict)
    if docs:
        rewrite_section(name, title, "\n".join([*body, "", verdict]))
    return 1 if missed else 0


@contextmanager
def azurite() -> Iterator[Azurite]:
    """A private Azurite on free ports, its data in a temporary folder that goes with it.

    Private, so a benchmark never shares state or load with a developer's own emulator.
    """
    from shared import azurite as emulator

    with tempfile.TemporaryDirectory(prefix="ftpilot-bench-") as scratch:
        server = emulator.start(Path(scratch) / "azurite")
        try:
            yield server
        finally:
            server.stop(grace_s=0.5)  # throw-away data


def services_on(
    server: Azurite, platform: MLPlatform, storage: Callable[[Settings], Storage] | None = None, **settings: Any
) -> Services:
    """The app's services over ``server`` with storage names of their own, installed for the functions.

    Fresh container, table and queue names let one Azurite hold independent runs (a baseline
    and the measured one) without one seeing the other's records. Every other setting is the
    documented default or in ``settings``: FTPILOT_* variables in the shell are ignored, so
    the figures do not depend on who ran them. ``storage`` builds the storage from the settings
    (default: the real ``Storage``).
    """
    from shared.config import Settings
    from shared.services import Services, use_services
    from shared.storage import Storage

    suffix = uuid.uuid4().hex[:10]
    defaults = {name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()}
    configured = Settings(
        **defaults
        | {
            "storage": server.connection_string,
            "intake_container": f"bench-{suffix}",
            "runs_table": f"bench{suffix}",
            "rollout_queue": f"bench-{suffix}",
            "events_queue": f"bench-events-{suffix}",
            "data_dir": server.location.parent / "ftpilot",
        }
        | settings
    )
    built = (storage or Storage)(configured)
    built.ensure()
    services = Services(configured, built, platform)
    use_services(services)
    return services
