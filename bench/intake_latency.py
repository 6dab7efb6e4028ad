"""Intake latency: a dataset lands in the intake container; how long until its job is submitted.

    python -m bench.intake_latency [--size 10MB] [--uploads 5] [--no-docs]

Over a private Azurite, with the test suite's in-memory ML platform (submitting a job is
instant, so the figure is ftpilot's own work): each upload is a different ultrachat-shaped
file (bench/datagen.py, one seed per upload, so no upload dedupes against another). Once
the upload has completed, the blob function ``functions.intake.intake`` is called with a
fresh SDK ``BlobClient``, as the blob extension binds it, and timed until it returns; the
run record must then be ``submitted``. The handler reads the blob twice (validation, which
collects the split keys as it parses, then the split's writing pass), writes the report and
both splits and updates the record. One
small upload first, untimed, so lazy imports and client set-up are not counted (the cold
start benchmark covers those). Baseline in the same run: downloading the same blob's bytes
once, the floor for anything that reads it.

Exits 1 when any upload takes 2 s or more from landing to submitted.
"""

from __future__ import annotations

import sys
import time

from azure.storage.blob import BlobClient

from bench import Latency, arguments, azurite, header, machine, publish, services_on
from bench.datagen import ensure_dataset, format_size, parse_size
from functions.intake import intake
from shared.runs import RunState
from shared.services import Services
from tests.data import dataset
from tests.fakes.platform import FakePlatform

TARGET_S = 2.0
MB = 10**6


def land(services: Services, name: str, content: bytes) -> BlobClient:
    """Upload ``content`` and return the client the blob extension would hand the function."""
    services.storage.blob(name).upload_blob(content, overwrite=True)
    return BlobClient.from_connection_string(
        services.settings.storage_account.connection_string, services.settings.intake_container, name
    )


def handle(services: Services, name: str, content: bytes) -> float:
    """Seconds from the upload having landed to the function returning with the run submitted."""
    client = land(services, name, content)
    started = time.perf_counter()
    intake(client)
    elapsed = time.perf_counter() - started
    states = [run.state for run in services.runs.all() if run.dataset == name]
    if states != [RunState.SUBMITTED]:
        raise SystemExit(f"{name}: expected one submitted run, found {states}")
    return elapsed


def download(services: Services, name: str) -> float:
    """Seconds to read the blob's bytes once with the SDK: the floor of any handler that reads it."""
    client = BlobClient.from_connection_string(
        services.settings.storage_account.connection_string, services.settings.intake_container, name
    )
    started = time.perf_counter()
    client.download_blob().readall()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--size", default="10MB", help="size of each uploaded dataset (default 10MB)")
    parser.add_argument("--uploads", type=int, default=5, help="timed uploads, each with different content")
    args = parser.parse_args(argv)

    print(about := machine())
    size = parse_size(args.size)
    files = [ensure_dataset(size, seed=seed) for seed in range(1, args.uploads + 1)]
    with azurite() as server:
        # A training slot for every upload: the fake's jobs never finish, and a queued run is not the figure.
        services = services_on(server, FakePlatform(), max_training_runs=args.uploads + 1)
        handle(services, "incoming/warm-up.jsonl", dataset(40))
        handled, floor = [], []
        for index, path in enumerate(files):
            name = f"incoming/bench-{index}.jsonl"
            handled.append(handle(services, name, path.read_bytes()))
            floor.append(download(services, name))
            print(f"{name} ({path.stat().st_size / MB:.1f} MB): intake {handled[-1]:.3f} s, download {floor[-1]:.3f} s")

    ours, baseline = Latency.of(handled), Latency.of(floor)
    ratio = ours.p50 / baseline.p50
    label = f"{format_size(size)} x {args.uploads}"
    rows = [
        f"| {label} | blob function: landed to `submitted` | {ours.p50:.3f} | {ours.max:.3f} | **{ratio:.1f}x** |",
        f"| {label} | baseline: download the blob once | {baseline.p50:.3f} | {baseline.max:.3f} | 1x |",
    ]
    print(*rows, sep="\n")
    body = [
        header(f"python -m bench.intake_latency --size {args.size} --uploads {args.uploads}", about),
        "",
        "| uploads | what | median (s) | max (s) | vs baseline |",
        "|---|---|--:|--:|--:|",
        *rows,
    ]
    missed = (
        [f"the slowest upload took {ours.max:.2f} s (target under {TARGET_S:.0f} s)"] if ours.max >= TARGET_S else []
    )
    met = f"every {format_size(size)} upload went from landed to submitted in under {TARGET_S:.0f} s."
    return publish("intake_latency", "Intake latency", body, missed, met, docs=not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
