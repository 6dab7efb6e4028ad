"""The benchmarks still run: each, at a small size, as its own process, gets as far as its verdict.

A benchmark checks what it measures (every upload submitted, the expected endpoints deleted,
nothing lost) and stops with a message when a check fails, so a change to the product can
leave one unable to measure anything: two did, unnoticed, until ``make bench`` was run. Here
each runs as ``make bench`` runs it, without writing docs/benchmarks.md, at a size that takes
seconds (all but cold_start, whose runtime environment takes minutes to build). Only reaching
the verdict is asserted, met or missed: the timings of a small run on a shared CI machine are
no figure (the benchmarks themselves are the speed checks).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.paths import REPO

SMALL = {
    "validation": ["--sizes", "10MB", "--runs", "1"],
    "serving": ["--requests", "4", "--clients", "2", "--max-tokens", "8"],
    "intake_latency": ["--size", "1MB", "--uploads", "5"],
    "cleanup_sweep": ["--endpoints", "20", "--baseline-endpoints", "5"],
    "event_burst": ["--events", "50"],
    "reconcile_tick": ["--runs", "100"],
    "admission_burst": ["--uploads", "12", "--cap", "4"],
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_benchmark_reaches_its_verdict(name: str) -> None:
    command = [sys.executable, "-m", f"bench.{name}", *SMALL[name], "--no-docs"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("Target met:", "**Target missed**:"))]
    assert len(verdicts) == 1, f"{name} stopped before its verdict (exit {done.returncode}):\n{done.stderr[-3000:]}"
