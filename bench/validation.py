"""Validation throughput and memory: our CLI against the pandas baseline, timed from outside.

    python -m bench.validation [--sizes 200MB,1GB] [--runs 3] [--no-docs]

For each size, an ultrachat-shaped file is generated once (bench/.data/, gitignored) and
read once to put both tools on a warm page cache. Then ``python -m shared.cli validate
--json`` runs ``--runs`` times and the baseline (bench/pandas_baseline.py: pandas.read_json
plus the same checks over the DataFrame) once, each as its own process; the wall time
includes interpreter start-up and imports, as a user sees it. Both tools must agree on the
verdict and the token statistics, or the comparison is void.

The parse-only limit is measured in the same run: the file decoded line by line, one core,
with the fastest JSON decoder installed (each candidate timed twice, the best time kept), before
the baseline runs. It is
what validation could reach if checking, hashing and reading cost nothing on one core, so
validation's throughput as a share of it says how much of the work is the checks'.

Writes the results into its section of docs/benchmarks.md and exits 1 when a file of 1 GB
or more misses a target: at least 10x the baseline's throughput, under 100 MiB peak RSS, and
at least 75% of the single-core parse-only limit.
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
TARGET_PARSE_SHARE = 0.75
MIB = 1024**2
# Decoders the parse-only limit may use, by module: the statement that decodes one line.
DECODERS = {"orjson": "orjson.loads(line)", "msgspec": "msgspec.json.decode(line)", "json": "json.loads(line)"}
_PARSE_ONLY = """
import sys, {module}
with open(sys.argv[1], "rb") as file:
    for line in file:
        if line.strip():
            {statement}
"""


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


def _parse_limit(path: Path, cwd: Path) -> tuple[str, float]:
    """The fastest installed decoder and its wall time over ``path``, one line at a time, one core."""
    from importlib.util import find_spec

    times = {}
    for module, statement in DECODERS.items():
        if find_spec(module) is None:
            continue
        script = _PARSE_ONLY.format(module=module, statement=statement)
        results = [measure([sys.executable, "-c", script, str(path)], cwd=cwd, env=_environment()) for _ in range(2)]
        if all(result.returncode == 0 for result in results):
            times[module] = min(result.wall_s for result in results)  # the limit: the better of two
    fastest = min(times, key=times.__getitem__)
    return fastest, times[fastest]


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
            decoder, parse_s = _parse_limit(path, cwd)  # before the baseline's gigabytes come and go
            runs = [_run_ours(path, cwd) for _ in range(args.runs)]
            report = runs[0][1]
            wall = statistics.median(run.wall_s for run, _ in runs)
            peak = max(run.peak_rss_bytes for run, _ in runs)
            baseline, base_report = _run_baseline(path, cwd)
            _same_answers(report, base_report)
            speedup = baseline.wall_s / wall
            share = parse_s / wall
            label = format_size(size)
            examples = report["examples"]
            for tool, seconds, rss, ratio, of_limit in (
                ("`ftpilot validate`", wall, peak, f"**{speedup:.1f}x**", f"**{share:.0%}**"),
                ("pandas baseline", baseline.wall_s, baseline.peak_rss_bytes, "1x", f"{parse_s / baseline.wall_s:.0%}"),
                (f"parse only (`{decoder}`, one core)", parse_s, None, "", "100%"),
            ):
                shown_rss = "" if rss is None else f"{rss / MIB:,.0f}"
                rows.append(
                    f"| {label} ({examples:,} examples) | {tool} | {seconds:.2f} | {actual / seconds / 1e6:,.0f} "
                    f"| {shown_rss} | {ratio} | {of_limit} |"
                )
                print(rows[-1])
            if actual >= TARGET_FROM_SIZE and (
                speedup < TARGET_SPEEDUP or peak >= TARGET_RSS or share < TARGET_PARSE_SHARE
            ):
                missed.append(
                    f"{label}: {speedup:.1f}x the baseline, {peak / MIB:.0f} MiB peak RSS, "
                    f"{share:.0%} of the parse-only limit"
                )

    verdict = (
        f"**Target missed**: {'; '.join(missed)}."
        if missed
        else f"Target met: at least {TARGET_SPEEDUP}x the baseline's throughput, under "
        f"{TARGET_RSS // MIB} MiB peak RSS and at least {TARGET_PARSE_SHARE:.0%} of the single-core parse-only "
        "limit on files of 1 GB and more."
    )
    body = "\n".join(
        [
            f"Measured {today()} with `python -m bench.validation --sizes {args.sizes} --runs {args.runs}`",
            f"on {about}.",
            "",
            "| file | tool | wall (s) | MB/s | peak RSS (MiB) | vs baseline | of the parse-only limit |",
            "|---|---|--:|--:|--:|--:|--:|",
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
