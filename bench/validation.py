"""Validation throughput and memory: our CLI against the pandas baseline, timed from outside.

    python -m bench.validation [--sizes 200MB,1GB] [--runs 3] [--no-docs]

For each size, an ultrachat-shaped file is generated once (bench/.data/, gitignored) and
read once to put both tools on a warm page cache. Then ``python -m shared.cli validate
--json`` runs ``--runs`` times and the baseline (bench/pandas_baseline.py: pandas.read_json
plus the same checks over the DataFrame) once, each as its own process; the wall time
includes interpreter start-up and imports, as a user sees it. Both tools must agree on the
verdict and the token statistics, or the comparison is void.

Writes the results into its section of docs/benchmarks.md and exits 1 when a file of 1 GB
or more misses the target: at least 10x the baseline's throughput, under 100 MiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import REPO, Measurement, machine, measure, rewrite_section, today
from bench.datagen import ensure_dataset, format_size, parse_size

TARGET_SPEEDUP = 10
TARGET_RSS = 100 * 1024**2
TARGET_FROM_SIZE = 10**9
MIB = 1024**2


def _environment() -> dict[str, str]:
    """No FTPILOT_* settings: both tools check against the defaults (max_seq_length 4096, 3 epochs)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FTPILOT_")}
    return environment | {"PYTHONPATH": str(REPO)}


def _run_ours(path: Path, cwd: Path) -> tuple[Measurement, dict]:
    result = measure([sys.executable, "-m", "shared.cli", "validate", str(path), "--json"], cwd=cwd, env=_environment())
    if result.returncode not in (0, 1):
        raise SystemExit(f"validate failed on {path} with exit code {result.returncode}")
    return result, json.loads(result.stdout)


def _run_baseline(path: Path, cwd: Path) -> tuple[Measurement, dict]:
    result = measure([sys.executable, "-m", "bench.pandas_baseline", str(path)], cwd=cwd, env=_environment())
    if result.returncode not in (0, 1):
        raise SystemExit(f"the baseline failed on {path} with exit code {result.returncode}")
    return result, json.loads(result.stdout)


def _same_answers(ours: dict, baseline: dict) -> None:
    """Both tools must have done the same work, or their times are not comparable."""
    tokens = ours["stats"]["tokens"]
    pairs = {
        "valid": (ours["valid"], baseline["valid"]),
        "examples": (ours["examples"], baseline["examples"]),
        "over max_seq_length": (tokens["over_max_seq_length"], baseline["tokens"]["over"]),
        "p50 tokens": (tokens["p50"], baseline["tokens"]["p50"]),
        "billed tokens": (ours["stats"]["billed_tokens"], baseline["billed_tokens"]),
    }
    for name, (mine, theirs) in pairs.items():
        if mine != theirs:
            raise SystemExit(f"validator and baseline disagree on {name}: {mine} != {theirs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200MB,1GB", help="comma-separated file sizes (default 200MB,1GB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of the validator per size; the median counts")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)

    about = machine()
    rows: list[str] = []
    missed: list[str] = []
    print(about)
    with tempfile.TemporaryDirectory() as scratch:  # no local.settings.json in the working directory
        cwd = Path(scratch)
        for size in (parse_size(text) for text in args.sizes.split(",")):
            path = ensure_dataset(size)
            actual = path.stat().st_size
            with path.open("rb") as file:  # warm the page cache: both tools read from memory
                while file.read(16 * MIB):
                    pass
            runs = [_run_ours(path, cwd) for _ in range(args.runs)]
            report = runs[0][1]
            wall = statistics.median(run.wall_s for run, _ in runs)
            peak = max(run.peak_rss_bytes for run, _ in runs)
            baseline, base_report = _run_baseline(path, cwd)
            _same_answers(report, base_report)
            speedup = baseline.wall_s / wall
            label = format_size(size)
            examples = report["examples"]
            for tool, seconds, rss, ratio in (
                ("`ftpilot validate`", wall, peak, f"**{speedup:.1f}x**"),
                ("pandas baseline", baseline.wall_s, baseline.peak_rss_bytes, "1x"),
            ):
                rows.append(
                    f"| {label} ({examples:,} examples) | {tool} | {seconds:.2f} | {actual / seconds / 1e6:,.0f} "
                    f"| {rss / MIB:,.0f} | {ratio} |"
                )
                print(rows[-1])
            if actual >= TARGET_FROM_SIZE and (speedup < TARGET_SPEEDUP or peak >= TARGET_RSS):
                missed.append(f"{label}: {speedup:.1f}x the baseline, {peak / MIB:.0f} MiB peak RSS")

    verdict = (
        f"**Target missed**: {'; '.join(missed)}."
        if missed
        else f"Target met: at least {TARGET_SPEEDUP}x the baseline's throughput and under "
        f"{TARGET_RSS // MIB} MiB peak RSS on files of 1 GB and more."
    )
    body = "\n".join(
        [
            f"Measured {today()} with `python -m bench.validation --sizes {args.sizes} --runs {args.runs}`",
            f"on {about}.",
            "",
            "| file | tool | wall (s) | MB/s | peak RSS (MiB) | vs baseline |",
            "|---|---|--:|--:|--:|--:|",
            *rows,
            "",
            verdict,
        ]
    )
    print(verdict)
    if not args.no_docs:
        rewrite_section("validation", "Validation", body)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
