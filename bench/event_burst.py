"""Event burst: how fast the Event Grid function answers when 1,000 run events arrive at once.

    python -m bench.event_burst [--events 1000] [--concurrency N] [--no-docs]

Event Grid retries a delivery that is not answered in time, and a busy workspace emits a
burst of events when a pipeline's steps finish, so ``run_events`` must answer quickly under
load. Over a private Azurite, run records exist for 100 submitted jobs (claimed with the
RunStore API, as intake leaves them). The burst is a shuffled mix built from Azure's sample
events (tests/events.py): events for those jobs, child-step events of the same pipelines,
events from a foreign workspace, jobs ftpilot did not submit, ftpilot-named jobs without a
record, and redeliveries of earlier events. Each is turned into the ``func.EventGridEvent``
the Python worker builds (its own converter) beforehand, then delivered to
``functions.rollout.run_events`` from a thread pool, as the worker runs sync functions, and
timed per call. The pool has the Python worker's own default size for sync functions
(``PYTHON_THREADPOOL_THREAD_COUNT`` unset on Python 3.9+: ``min(32, cpu_count + 4)``, 6 on two
cores); the host holds the rest of a burst until a thread is free, and scale-out adds instances.
A few deliveries first, untimed, open the connections. The queue must end
up holding exactly the events for ftpilot's jobs. The same events are then delivered again
one at a time, for reference: the latency without contention.

Baseline in the same run, same pool and count: one Table point read plus one queue send
with the SDK clients, the least the function must do for an event it queues.

Exits 1 when the function's p99 is 200 ms or more.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from bench import Latency, arguments, azurite, header, machine, publish, services_on
from functions.rollout import run_events
from shared.naming import job_name, run_id_for
from shared.run_events import workspace_topic
from shared.runs import PARTITION, RunRecord, RunState
from shared.services import Services
from tests.events import delivered, run_event
from tests.fakes.platform import FakePlatform

TARGET_P99_S = 0.2
RUNS = 100
# Shares of the burst; the rest of it redelivers events already in it (Event Grid is at-least-once).
MIX = {"ours": 0.45, "child step": 0.2, "foreign topic": 0.1, "not ftpilot's": 0.1, "no record": 0.05}
STATUSES = ("Running", "Completed", "Completed", "Failed")
WARM_UP = 16
# The Python worker's default pool for sync functions (PYTHON_THREADPOOL_THREAD_COUNT unset, Python 3.9+).
WORKER_THREADS = min(32, (os.cpu_count() or 1) + 4)
T = TypeVar("T")


def submitted_runs(services: Services, count: int) -> list[str]:
    """Job names of ``count`` runs in state ``submitted``, their records claimed as intake claims them."""

    def claim(index: int) -> str:
        sha256 = hashlib.sha256(f"bench dataset {index}".encode()).hexdigest()
        run_id = run_id_for(sha256)
        record = RunRecord(run_id=run_id, dataset=f"incoming/chat-{index}.jsonl", sha256=sha256)
        services.runs.claim(record.moved(RunState.SUBMITTED, job_name=job_name(run_id)))
        return job_name(run_id)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(claim, range(count)))


def burst_events(topic: str, jobs: Sequence[str], count: int, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """(kind, raw event) pairs in delivery order: the mix in MIX, then redeliveries up to ``count``."""
    foreign = workspace_topic("00000000-0000-0000-0000-000000000000", "other-team", "other-workspace")
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "ours": lambda: run_event(topic, rng.choice(jobs), rng.choice(STATUSES), event_id=str(uuid.uuid4())),
        "child step": lambda: run_event(
            topic, str(uuid.uuid4()), rng.choice(STATUSES), run_type="azureml.StepRun", event_id=str(uuid.uuid4())
        ),
        "foreign topic": lambda: run_event(foreign, rng.choice(jobs), event_id=str(uuid.uuid4())),
        "not ftpilot's": lambda: run_event(topic, f"AutoML_{uuid.uuid4()}", event_id=str(uuid.uuid4())),
        "no record": lambda: run_event(
            topic, job_name(run_id_for(uuid.uuid4().hex)), rng.choice(STATUSES), event_id=str(uuid.uuid4())
        ),
    }
    events = [(kind, makers[kind]()) for kind, share in MIX.items() for _ in range(round(share * count))]
    events += [(f"redelivered {kind}", event) for kind, event in rng.choices(events, k=count - len(events))]
    rng.shuffle(events)
    return events


def timed_burst(call: Callable[[T], object], items: Sequence[T], concurrency: int) -> tuple[list[float], float]:
    """Per-call seconds of ``call`` over ``items`` from ``concurrency`` threads, and the whole burst's."""

    def timed(item: T) -> float:
        started = time.perf_counter()
        call(item)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        samples = list(pool.map(timed, items))
    return samples, time.perf_counter() - started


def sdk_floor(services: Services, jobs: Sequence[str], count: int, concurrency: int) -> tuple[list[float], float]:
    """The baseline burst: a point read of a run record and a queue send per call, straight through the SDK."""
    connection = services.settings.storage_account.connection_string
    table = TableClient.from_connection_string(connection, services.settings.runs_table)
    queue = QueueClient.from_connection_string(connection, f"{services.settings.rollout_queue}-floor")
    queue.create_queue()

    def read_and_send(job: str) -> None:
        table.get_entity(PARTITION, job.removeprefix("ftpilot-"))
        queue.send_message('{"run_id": "x", "event": "y", "status": "Completed"}')

    return timed_burst(read_and_send, [jobs[i % len(jobs)] for i in range(count)], concurrency)


def row(label: str, latency: Latency, rate: str, ratio: str) -> str:
    ms = [f"{value * 1000:.1f}" for value in (latency.p50, latency.p95, latency.p99, latency.max)]
    return f"| {label} | {latency.count:,} | {' | '.join(ms)} | {rate} | {ratio} |"


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--events", type=int, default=1000, help="events in the burst (default 1000)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=WORKER_THREADS,
        help=f"deliveries in flight at once (default {WORKER_THREADS}, the Python worker's thread pool here)",
    )
    args = parser.parse_args(argv)

    print(about := machine())
    with azurite() as server:
        services = services_on(server, FakePlatform())
        jobs = submitted_runs(services, RUNS)
        events = burst_events(services.settings.topic, jobs, args.events, random.Random(0))
        deliveries = [delivered(event) for _, event in events]
        warm_up = [delivered(run_event(services.settings.topic, job)) for job in jobs[:WARM_UP]]
        timed_burst(run_events, warm_up, args.concurrency)
        floor, floor_wall = sdk_floor(services, jobs, args.events, args.concurrency)
        samples, wall = timed_burst(run_events, deliveries, args.concurrency)
        queued = services.storage.queue.get_queue_properties().approximate_message_count - len(warm_up)
        alone, alone_wall = timed_burst(run_events, deliveries, 1)
    expected = sum(kind.endswith("ours") for kind, _ in events)
    if queued != expected:
        raise SystemExit(f"the burst queued {queued} messages, expected {expected} (one per event for our jobs)")

    ours, baseline = Latency.of(samples), Latency.of(floor)
    queued_only = Latency.of([s for s, (kind, _) in zip(samples, events, strict=True) if kind.endswith("ours")])
    mix = ", ".join(f"{sum(k == kind for k, _ in events)} {kind}" for kind in MIX)
    rows = [
        row("`run_events`, every event", ours, f"{ours.count / wall:,.0f}", f"**{ours.p99 / baseline.p99:.2f}x**"),
        row("`run_events`, the events it queued", queued_only, "", f"{queued_only.p99 / baseline.p99:.2f}x"),
        row("baseline: table point read + queue send", baseline, f"{baseline.count / floor_wall:,.0f}", "1x"),
        row("reference: `run_events`, one call at a time", Latency.of(alone), f"{len(alone) / alone_wall:,.0f}", ""),
    ]
    burst = f"Burst: {mix} and {len(events) - sum(k in MIX for k, _ in events)} redeliveries; {queued} queued."
    print(burst, *rows, sep="\n")
    body = [
        header(f"python -m bench.event_burst --events {args.events} --concurrency {args.concurrency}", about),
        "",
        burst,
        "",
        "| calls | n | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | calls/s | p99 vs baseline |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
    ]
    missed = (
        [f"p99 {ours.p99 * 1000:.0f} ms (target under {TARGET_P99_S * 1000:.0f} ms)"]
        if ours.p99 >= TARGET_P99_S
        else []
    )
    met = f"p99 under {TARGET_P99_S * 1000:.0f} ms for a burst of {args.events:,} events."
    return publish("event_burst", "Event burst", body, missed, met, docs=not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
