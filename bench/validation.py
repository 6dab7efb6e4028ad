"""Validation throughput and memory: our CLI against the pandas baseline, timed from outside.

    python -m bench.validation [--sizes 200MB,1GB] [--runs 3] [--no-docs]

For each size, an ultrachat-shaped file is generated once (bench/.data/, gitignored). Then
``--runs`` rounds each time, on a warm page cache and compiled bytecode, each as its own
process, the parse-only limit, ``python -m shared.cli validate --json`` and the baseline
(bench/pandas_baseline.py: pandas.read_json plus the same checks over the DataFrame); the wall
time includes interpreter start-up and imports, as a user sees it. The medians are compared.
Rounds, not all runs of one tool and then the other's: the host's neighbours move wall times
here by up to 40% from one minute to the next, and a slow spell should fall on both tools alike.
Both tools must agree on the verdict and the token statistics, or the comparison is void.

The parse-only limit is the file decoded line by line, one core, with the fastest JSON decoder
installed (each candidate timed once first; the fastest is timed in every round). It is what
validation could reach if checking, hashing and reading cost nothing on one core, so
validation's throughput as a share of it says how much of the work is the checks'.

Writes the results into its section of docs/benchmarks.md and exits 1 when a file of 1 GB
or more misses a target: at least 10x the baseline's throughput, under 100 MiB peak RSS, and
at least 75% of the single-core parse-only limit.
"""

from __future__ import annotations

import argparse
import compileall
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


def _compile_bytecode() -> None:
    """Write the bytecode of ftpilot's modules and the bench's, as an install or a first run would.

    These machines set PYTHONDONTWRITEBYTECODE, so without this every timed process compiled
    them from source first (~40 ms of a 1.6 s validation, none of a user's runs after their first).
    The child processes still read bytecode that exists; compileall writes it whatever that says.
    """
    for package in ("shared", "bench"):
        compileall.compile_dir(REPO / package, quiet=1)


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


def _parse_only(path: Path, cwd: Path, module: str) -> Measurement:
    script = _PARSE_ONLY.format(module=module, statement=DECODERS[module])
    return measure([sys.executable, "-c", script, str(path)], cwd=cwd, env=_environment())


def _fastest_decoder(path: Path, cwd: Path) -> str:
    """The installed decoder that parses ``path`` fastest, one line at a time, one core (one run each)."""
    from importlib.util import find_spec

    times = {}
    for module in DECODERS:
        if find_spec(module) is not None and (result := _parse_only(path, cwd, module)).returncode == 0:
            times[module] = result.wall_s
    return min(times, key=times.__getitem__)


def _warm(path: Path) -> None:
    """Read the file once, so it is in the page cache (the baseline's 11 GB can push it out)."""
    with path.open("rb") as file:
        while file.read(16 * MIB):
            pass


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
    parser.add_argument(
        "--runs", type=int, default=3, help="rounds per size (parse-only, validator, baseline); medians count"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)

    about = machine()
    _compile_bytecode()
    rows: list[str] = []
    missed: list[str] = []
    print(about)
    with tempfile.TemporaryDirectory() as scratch:  # no local.settings.json in the working directory
        cwd = Path(scratch)
        for size in (parse_size(text) for text in args.sizes.split(",")):
            path = ensure_dataset(size)
            actual = path.stat().st_size
            _warm(path)
            decoder = _fastest_decoder(path, cwd)
            limits: list[float] = []
            runs: list[tuple[Measurement, dict]] = []
            baselines: list[tuple[Measurement, dict]] = []
            for _ in range(args.runs):  # in rounds, so that a slower spell of the host falls on all three
                _warm(path)
                limits.append(_parse_only(path, cwd, decoder).wall_s)
                runs.append(_run_ours(path, cwd))
                baselines.append(_run_baseline(path, cwd))
            report = runs[0][1]
            for _, base_report in baselines:
                _same_answers(report, base_report)
            wall = statistics.median(run.wall_s for run, _ in runs)
            peak = max(run.peak_rss_bytes for run, _ in runs)
            base_wall = statistics.median(run.wall_s for run, _ in baselines)
            base_peak = max(run.peak_rss_bytes for run, _ in baselines)
            parse_s = statistics.median(limits)  # a median like the others: a best-of against medians is biased
            speedup = base_wall / wall
            share = parse_s / wall
            label = format_size(size)
            examples = report["examples"]
            for tool, seconds, rss, ratio, of_limit in (
                ("`ftpilot validate`", wall, peak, f"**{speedup:.1f}x**", f"**{share:.0%}**"),
                ("pandas baseline", base_wall, base_peak, "1x", f"{parse_s / base_wall:.0%}"),
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
