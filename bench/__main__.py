"""Run every benchmark, each in a fresh interpreter, and say which met its target.

    python -m bench [--quick | --sizes 200MB,1GB] [--no-docs]

Each benchmark runs as ``python -m bench.<name>`` in its own process, so one's imports,
threads and garbage never skew the next one's figures, and one that crashes does not stop
the others. Each prints its figures and rewrites its own section of docs/benchmarks.md.
``--quick`` validates the 200 MB file only and leaves the validation section as it is: its
target is about files of 1 GB and more, which a quick run does not measure.

Exits 1 when any benchmark missed its target or could not run.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench import REPO, arguments


def plan(sizes: str, quick: bool, docs: bool) -> dict[str, list[str]]:
    """Each benchmark's module name and its arguments, in the order they run."""
    validation = ["--sizes", "200MB" if quick else sizes]
    if quick or not docs:
        validation.append("--no-docs")
    others = [] if docs else ["--no-docs"]
    return {
        "validation": validation,
        "cold_start": others,
        "intake_latency": others,
        "event_burst": others,
        "cleanup_sweep": others,
        "reconcile_tick": others,
        "serving": others,
        "admission_burst": others,
    }


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="validation at 200MB only (its docs section untouched)")
    sizes.add_argument("--sizes", default="200MB,1GB", help="validation's file sizes (default 200MB,1GB)")
    args = parser.parse_args(argv)

    outcomes: list[tuple[str, int, float]] = []
    for name, options in plan(args.sizes, args.quick, not args.no_docs).items():
        command = [sys.executable, "-m", f"bench.{name}", *options]
        print(f"\n=== {' '.join(['python', *command[1:]])}", flush=True)
        started = time.perf_counter()
        returncode = subprocess.run(command, cwd=REPO, check=False).returncode
        outcomes.append((name, returncode, time.perf_counter() - started))

    print("\n=== summary")
    for name, returncode, seconds in outcomes:
        verdict = "target met" if returncode == 0 else f"TARGET MISSED or failed (exit {returncode}), see above"
        if name == "validation" and args.quick and returncode == 0:
            verdict = "ran; its target is for files of 1 GB and more, which --quick does not measure"
        print(f"{name:<16} {seconds:6.0f} s  {verdict}")
    return 1 if any(returncode for _, returncode, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
