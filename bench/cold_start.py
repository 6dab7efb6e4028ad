"""Cold start: what ``import function_app`` costs a fresh interpreter, as the Python worker pays it.

    python -m bench.cold_start [--runs 5] [--platform azureml] [--no-docs]

The Functions host starts a worker process and imports ``function_app`` before the first
trigger is served, on every cold start and scale-out. The interpreter is a virtual
environment with exactly ``requirements.txt`` installed, what a deployed Function App has
(``bench/.data/runtime-venv``, built on first use and rebuilt when requirements.txt changes;
the development ``.venv`` also holds MLflow's aiohttp, which azure-core then imports, and
would overstate the cost by ~0.3 s). Each measured run is its own
interpreter (cwd = the repository, environment = local.settings.sample.json's app settings
with ``FTPILOT_PLATFORM`` as chosen, warm page cache and compiled bytecode after one untimed
run): the child times its own import with ``perf_counter`` and the kernel reports the
process's peak RSS (``os.wait4``). Baselines in the same run: the same import followed by
``import azure.ai.ml`` (what the app would cost if it imported the SDK at module level) and
a bare ``python -c pass``. The child also reports whether ``azure.ai.ml`` got imported, for
both platforms: the adapter must load only when a function first needs it. One extra run
under ``-X importtime`` lists the ten most expensive imports, so a regression names itself.

Exits 1 when the median import takes 0.5 s or more, the peak RSS reaches 80 MB, or
``azure.ai.ml`` is imported by ``import function_app``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass

from bench import REPO, arguments, header, machine, measure, publish

TARGET_IMPORT_S = 0.5
TARGET_RSS = 80 * 10**6
MB = 10**6
PLATFORMS = ("azureml", "local")
# The child times its own imports and says whether the Azure ML SDK came with them.
PROBE = """\
import json, sys, time
started = time.perf_counter()
{imports}
elapsed = time.perf_counter() - started
print(json.dumps({{"import_s": elapsed, "azure_ai_ml": "azure.ai.ml" in sys.modules}}))
"""
IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")


@dataclass(frozen=True)
class Sample:
    """One fresh interpreter: its own import time, its process wall time and peak RSS."""

    import_s: float
    wall_s: float
    peak_rss_bytes: int
    azure_ai_ml: bool


def runtime_python() -> str:
    """The interpreter of a venv holding only requirements.txt, (re)built when that file changes."""
    requirements = REPO / "requirements.txt"
    venv = REPO / "bench" / ".data" / "runtime-venv"
    stamp = venv / "requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    python = venv / "bin" / "python"
    if not (python.exists() and stamp.exists() and stamp.read_text() == digest):
        print(f"building {venv.relative_to(REPO)} from requirements.txt (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
        stamp.write_text(digest)
    return str(python)


def app_environment(platform: str) -> dict[str, str]:
    """A Function App's settings (the sample's values), not whatever FTPILOT_* this shell has."""
    values = json.loads((REPO / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("FTPILOT_")}
    return inherited | values | {"FTPILOT_PLATFORM": platform}


def run_probe(python: str, imports: str, platform: str) -> Sample:
    result = measure([python, "-c", PROBE.format(imports=imports)], cwd=REPO, env=app_environment(platform))
    if result.returncode != 0:
        raise SystemExit(f"importing failed ({imports!r}, FTPILOT_PLATFORM={platform}): exit {result.returncode}")
    reported = json.loads(result.stdout)
    return Sample(reported["import_s"], result.wall_s, result.peak_rss_bytes, reported["azure_ai_ml"])


def run_bare(python: str) -> Sample:
    result = measure([python, "-c", "pass"], cwd=REPO)
    return Sample(0.0, result.wall_s, result.peak_rss_bytes, azure_ai_ml=False)


def median_of(samples: list[Sample]) -> Sample:
    """Median times; the highest peak RSS, since memory limits are about the worst run."""
    return Sample(
        statistics.median(s.import_s for s in samples),
        statistics.median(s.wall_s for s in samples),
        max(s.peak_rss_bytes for s in samples),
        any(s.azure_ai_ml for s in samples),
    )


def top_imports(python: str, platform: str, count: int = 10) -> list[tuple[float, float, str]]:
    """(cumulative ms, self ms, module) of the most expensive imports, one ``·`` per level of nesting."""
    completed = subprocess.run(
        [python, "-X", "importtime", "-c", "import function_app"],
        cwd=REPO,
        env=app_environment(platform),
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in completed.stderr.splitlines():
        match = IMPORTTIME.match(line)
        if match:
            own, cumulative, indent, module = match.groups()
            rows.append((int(cumulative) / 1000, int(own) / 1000, f"{'· ' * (len(indent) // 2)}`{module}`"))
    return sorted(rows, reverse=True)[:count]


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per variant; the median counts")
    parser.add_argument("--platform", choices=PLATFORMS, default="azureml", help="FTPILOT_PLATFORM of the timed runs")
    args = parser.parse_args(argv)

    print(about := machine())
    python = runtime_python()
    run_probe(python, "import function_app", args.platform)  # untimed: compile bytecode, warm the page cache
    leaks = [platform for platform in PLATFORMS if run_probe(python, "import function_app", platform).azure_ai_ml]
    ours = median_of([run_probe(python, "import function_app", args.platform) for _ in range(args.runs)])
    eager_imports = "import function_app\nimport azure.ai.ml"
    eager = median_of([run_probe(python, eager_imports, args.platform) for _ in range(args.runs)])
    bare = median_of([run_bare(python) for _ in range(args.runs)])

    time_ratio = ours.import_s / eager.import_s
    rss_ratio = ours.peak_rss_bytes / eager.peak_rss_bytes
    rows = []
    for label, sample, ratio in (
        (
            f"`import function_app` (FTPILOT_PLATFORM={args.platform})",
            ours,
            f"**{time_ratio:.2f}x** time, **{rss_ratio:.2f}x** RSS",
        ),
        ("baseline: `import function_app` + `import azure.ai.ml`", eager, "1x"),
        ("reference: `python -c pass`", bare, ""),
    ):
        imported = f"{sample.import_s:.3f}" if sample.import_s else "-"
        rows.append(f"| {label} | {imported} | {sample.wall_s:.3f} | {sample.peak_rss_bytes / MB:.0f} | {ratio} |")
        print(rows[-1])
    costs = top_imports(python, args.platform)
    print("top imports (cumulative ms, self ms, module):")
    for cumulative, own, module in costs:
        print(f"  {cumulative:8.1f} {own:7.1f}  {module}")

    missed = []
    if ours.import_s >= TARGET_IMPORT_S:
        missed.append(f"import takes {ours.import_s:.2f} s (target under {TARGET_IMPORT_S} s)")
    if ours.peak_rss_bytes >= TARGET_RSS:
        missed.append(f"peak RSS {ours.peak_rss_bytes / MB:.0f} MB (target under {TARGET_RSS // MB} MB)")
    if leaks:
        missed.append(f"`import function_app` imports azure.ai.ml with FTPILOT_PLATFORM={' and '.join(leaks)}")
    body = [
        header(f"python -m bench.cold_start --runs {args.runs} --platform {args.platform}", about),
        "",
        "| fresh interpreter | import (s) | process wall (s) | peak RSS (MB) | vs baseline |",
        "|---|--:|--:|--:|--:|",
        *rows,
        "",
        f"`azure.ai.ml` in `sys.modules` after `import function_app`: "
        f"{'yes, with FTPILOT_PLATFORM=' + ' and '.join(leaks) if leaks else 'no, with either platform'}.",
        "",
        "Most expensive imports (`python -X importtime -c 'import function_app'`, one run, `·` per level of nesting):",
        "",
        "| cumulative (ms) | self (ms) | module |",
        "|--:|--:|---|",
        *(f"| {cumulative:.0f} | {own:.0f} | {module} |" for cumulative, own, module in costs),
    ]
    met = (
        f"`import function_app` under {TARGET_IMPORT_S} s and {TARGET_RSS // MB} MB peak RSS, "
        "without importing azure.ai.ml on either platform."
    )
    return publish("cold_start", "Cold start", body, missed, met, docs=not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
