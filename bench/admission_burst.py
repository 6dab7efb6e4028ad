"""Admission control: 1,000 uploads in one burst, at most 4 training at once, until every run is live.

    python -m bench.admission_burst [--uploads 1000] [--cap 4] [--no-docs]

A simulation of the whole product over a private Azurite (table and container; the queues
are the compound-fault world's, on its clock) and the service-like fake platform with Azure's
durations put back on that clock: a job waits 5-15 minutes for its compute to scale up and
trains 20-40 minutes; an endpoint provisions in 3 minutes, a deployment in 15, a traffic
change in 2. Every function runs as the host would run it: the blob trigger for each upload,
the Event Grid trigger for each job event, the queue workers, the lifecycle-event sender, the
reconciler every 5 minutes and the idle sweep every 15, at the default settings but the cap.

Every platform call is metered as the Azure Resource Manager requests it makes
(``ARM_REQUESTS``: the route analysis of docs/arm-calls.md, which a test re-measures with the
real SDK), per simulated minute, and the peak minute is held to the documented per-subscription
throttling limits (Azure Resource Manager's token buckets since 2024: reads refill at 25 a
second, writes and deletes at 10 a second per subscription and region, learn.microsoft.com,
"Understand how Azure Resource Manager throttles requests").

Checks, each of which fails the run: every upload is submitted exactly once and ends live (or
retired by the idle sweep), no queued run was passed by a newer upload (the blob's
last-modified time, then the order intake queued them), and no more than the cap trained at any
minute. Baseline in the same run: the same burst with no cap
(``max_training_runs`` = the number of uploads) for its first half hour, in which every job is
submitted at once: what admission control is for.

One setting differs from the defaults besides the cap: ``poll_interval_s`` is 300 (``POLL_INTERVAL_S``),
so that the simulation itself takes minutes; at the default 60 s each rollout in progress makes about
three ARM reads a minute more, a few dozen a minute at most here, against a limit of 1,500.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from azure.functions.queue import QueueMessage as DeliveredMessage
from azure.functions.timer import TimerRequest

from bench import arguments, azurite, header, machine, publish, services_on
from shared.config import Settings
from shared.platform.port import JobStatus
from shared.runs import RunState, use_clock
from shared.services import use_services
from tests.data import dataset
from tests.events import delivered, run_event
from tests.fakes.platform import FakePlatform
from tests.faults import MAX_DEQUEUE, VISIBILITY_ROUNDS, Delivery, Faults, SimStorage, World

# (reads, writes, deletes) that one call of each port method sends to management.azure.com.
ARM_REQUESTS: dict[str, tuple[int, int, int]] = {
    "submit_finetune": (5, 1, 0),  # measured: workspace, compute, datastore, job lookup; the job PUT
    "get_job": (1, 0, 0),
    "begin_cancel_job": (1, 1, 0),
    "get_job_metrics": (0, 0, 0),  # MLflow tracking, on the workspace's regional host
    "register_model": (3, 1, 0),
    "get_model": (1, 0, 0),
    "tag_model": (1, 1, 0),
    "get_endpoint": (2, 0, 0),  # the endpoint, then its deployments
    "list_endpoints": (1, 0, 0),
    "begin_create_endpoint": (1, 1, 0),  # the workspace (for its location), the PUT
    "get_deployment": (1, 0, 0),
    "list_deployments": (1, 0, 0),
    "begin_create_deployment": (1, 1, 0),
    "begin_set_traffic": (2, 1, 0),
    "begin_delete_deployment": (1, 0, 1),
    "begin_delete_endpoint": (1, 0, 1),
    "invoke": (2, 0, 0),  # the endpoint's auth mode and listKeys; the call itself goes to the scoring URI
    "open_scoring": (2, 0, 0),
    "endpoint_requests": (1, 0, 0),  # Azure Monitor metrics, through ARM
}
# Requests per minute that Azure Resource Manager's token buckets refill, per subscription and region.
ARM_LIMITS_PER_MIN = {"reads": 25 * 60, "writes": 10 * 60, "deletes": 10 * 60}
KINDS = ("reads", "writes", "deletes")
SPIN_UP_MIN, TRAIN_MIN = (5, 15), (20, 40)
ENDPOINT_MIN, DEPLOYMENT_MIN, TRAFFIC_MIN = 3, 15, 2
RECONCILE_EVERY, CLEANUP_EVERY = 5, 15
MAX_ROUNDS = 60 * 24 * 30
BASELINE_MIN = 10  # the baseline's burst is over by then: every job it admits submitted, none finished
BASELINE_CAP: int = Settings.model_fields["max_training_runs"].metadata[1].le  # the largest cap the setting takes
# Re-checks of a long-running operation every 5 minutes, not the default 1, to keep the simulation's own
# run time in minutes: at the default a rollout in progress makes ~3 more ARM reads a minute.
POLL_INTERVAL_S = 300


class Timed(FakePlatform):
    """The fake, with Azure's durations on the world's clock instead of "ready after two reads"."""

    def __init__(self, world: World, rng: random.Random) -> None:
        super().__init__()
        self.world = world
        self.rng = rng
        self.ready: dict[tuple[str, str], int] = {}  # (endpoint, deployment or "") -> round it is ready
        self.timeline: dict[str, tuple[int, int]] = {}  # job -> (round it starts, round it completes)

    def submit_finetune(self, request: Any) -> Any:
        job = super().submit_finetune(request)
        if job.name not in self.timeline:
            start = self.world.clock + self.rng.randint(*SPIN_UP_MIN)
            self.timeline[job.name] = (start, start + self.rng.randint(*TRAIN_MIN))
        return job

    def _hold(self, endpoint: str, deployment: str, minutes: int) -> None:
        self.ready[(endpoint, deployment)] = self.world.clock + minutes
        holder = self.endpoints[endpoint]
        if deployment:
            holder.pending_deployments[deployment] = 10**9
        else:
            holder.pending = 10**9

    def begin_create_endpoint(self, request: Any) -> None:
        fresh = request.name not in self.endpoints
        super().begin_create_endpoint(request)
        if fresh:
            self._hold(request.name, "", ENDPOINT_MIN)

    def begin_set_traffic(self, endpoint_name: str, traffic: Any) -> None:
        super().begin_set_traffic(endpoint_name, traffic)
        self._hold(endpoint_name, "", TRAFFIC_MIN)

    def begin_create_deployment(self, request: Any) -> None:
        fresh = request.name not in self.endpoints[request.endpoint_name].deployments
        super().begin_create_deployment(request)
        if fresh:
            self._hold(request.endpoint_name, request.name, DEPLOYMENT_MIN)

    def get_endpoint(self, name: str) -> Any:
        endpoint = self.endpoints.get(name)
        if endpoint is not None and endpoint.pending and self.ready.get((name, ""), 0) <= self.world.clock:
            endpoint.pending = 1  # this read finds it done
        return super().get_endpoint(name)

    def get_deployment(self, endpoint_name: str, name: str) -> Any:
        endpoint = self.endpoints.get(endpoint_name)
        due = self.ready.get((endpoint_name, name), 0) <= self.world.clock
        if endpoint is not None and endpoint.pending_deployments.get(name) and due:
            endpoint.pending_deployments[name] = 1
        return super().get_deployment(endpoint_name, name)


class HostWorld(World):
    """The compound-fault world without faults, delivering each round's messages concurrently, as the host does."""

    def __init__(self, seed: int, workers: int = 8) -> None:
        super().__init__(Faults(random.Random(seed), on=False), random.Random(seed))
        self._pool = ThreadPoolExecutor(workers)
        self._lock = threading.Lock()

    def run(self, handler: Any, what: str) -> bool:
        try:
            handler()
        except Exception as error:
            with self._lock:
                self.outcomes[f"{what}: {type(error).__name__}"] += 1
            return False
        return True

    def deliver_queue(self, queue: Any, handler: Any, poison: Any) -> None:
        batch = queue.visible()
        for message in batch:  # taken by this round's workers; back after the visibility timeout if they fail
            message.dequeue_count += 1
            message.visible_at = self.clock + VISIBILITY_ROUNDS

        def one(message: Any) -> None:
            delivered = DeliveredMessage(
                id=str(message.id), body=message.content, dequeue_count=message.dequeue_count, pop_receipt="p"
            )
            if self.run(lambda: handler(delivered), queue.queue_name) or message.dequeue_count >= MAX_DEQUEUE:
                queue.messages.pop(message.id, None)

        list(self._pool.map(one, batch))

    def deliver_all(self, pending: list[Delivery], handler: Any, max_attempts: int) -> list[Delivery]:
        due = [d for d in pending if d.visible_at <= self.clock]
        later = [d for d in pending if d.visible_at > self.clock]

        def one(delivery: Delivery) -> Delivery | None:
            delivery.attempts += 1
            if self.run(lambda: handler(delivery.payload), delivery.what) or delivery.attempts >= max_attempts:
                return None
            delivery.visible_at = self.clock + VISIBILITY_ROUNDS
            return delivery

        return later + [d for d in self._pool.map(one, due) if d is not None]


class Metered:
    """The port, with every call counted as the ARM requests it makes, by minute of the world's clock."""

    def __init__(self, inner: Timed) -> None:
        self.inner = inner
        self.minutes: dict[int, Counter[str]] = {}
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ARM_REQUESTS:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            minute = self.minutes.setdefault(self.inner.world.clock, Counter())
            for kind, count in zip(KINDS, ARM_REQUESTS[name], strict=True):
                minute[kind] += count
            return method(*args, **kwargs)

        return call

    def peak(self, kind: str) -> tuple[int, int]:
        """The busiest minute for ``kind``: (requests, minute)."""
        return max(((c[kind], minute) for minute, c in self.minutes.items()), default=(0, 0))


@dataclass
class Outcome:
    uploads: int
    cap: int
    rounds: int
    wall_s: float
    metered: Metered
    states: Counter[str]
    busiest_training: int
    problems: list[str] = field(default_factory=list)


def simulate(server: Any, uploads: int, cap: int, seed: int = 7, minutes: int = MAX_ROUNDS) -> Outcome:
    """Play the burst until every run is live (or retired), or for ``minutes`` of the world's clock."""
    from functions.cleanup import cleanup
    from functions.intake import intake
    from functions.lifecycle_events import lifecycle_events
    from functions.reconcile import reconcile
    from functions.rollout import rollout, rollout_poison, run_events
    from shared.admission import upload_order

    rng = random.Random(seed)
    world = HostWorld(seed)
    timed = Timed(world, rng)
    metered = Metered(timed)
    services = services_on(
        server,
        metered,  # type: ignore[arg-type]
        storage=lambda settings: SimStorage(settings, world),
        max_training_runs=cap,
        poll_interval_s=POLL_INTERVAL_S,
    )
    settings, storage = services.settings, services.storage
    names = [f"incoming/team-{i % 50:02d}/set-{i:04d}.jsonl" for i in range(uploads)]
    use_clock(world.time)
    started = time.perf_counter()
    busiest = 0
    try:
        world.clock = 1
        for index, name in enumerate(names):  # the burst: every upload lands in the first minute
            storage.blob(name).upload_blob(dataset(12, start=index * 20), overwrite=True)
        blobs = [Delivery("intake", name, visible_at=1) for name in names]
        events: list[Delivery] = []
        while world.clock < minutes:
            blobs = world.deliver_all(blobs, lambda name: intake(storage.blob(name)), max_attempts=5)
            for job in list(timed.jobs.values()):
                begin, end = timed.timeline[job.name]
                moved = None
                if job.status is JobStatus.QUEUED and world.clock >= begin:
                    moved = JobStatus.RUNNING, "Running"
                elif job.status is JobStatus.RUNNING and world.clock >= end:
                    moved = JobStatus.COMPLETED, "Completed"
                if moved is not None:
                    timed.set_job(job.name, moved[0])
                    event = run_event(settings.topic, job.name, moved[1], event_id=f"{job.name}:{moved[1]}")
                    events.append(Delivery("event", event, visible_at=world.clock))
            training = (JobStatus.QUEUED, JobStatus.RUNNING)
            busiest = max(busiest, sum(job.status in training for job in timed.jobs.values()))
            events = world.deliver_all(events, lambda event: run_events(delivered(event)), max_attempts=4)
            world.deliver_queue(storage.queue, rollout, storage.poison_queue)
            world.deliver_queue(storage.poison_queue, rollout_poison, None)
            world.deliver_queue(storage.events_queue, lifecycle_events, None)
            if world.clock % RECONCILE_EVERY == 0:
                world.run(lambda: reconcile(TimerRequest(past_due=False)), "reconcile")
            if world.clock % CLEANUP_EVERY == 0:
                world.run(lambda: cleanup(TimerRequest(past_due=False)), "cleanup")
            if world.clock % 60 == 0:
                runs = list(services.runs.all())
                if len(runs) == uploads and all(r.state.settled for r in runs) and not len(storage.queue):
                    break
            world.clock += 1
        wall = time.perf_counter() - started
        runs = list(services.runs.all())
    finally:
        use_clock(None)
        use_services(None)

    outcome = Outcome(uploads, cap, world.clock, wall, metered, Counter(str(r.state) for r in runs), busiest)
    problems = outcome.problems
    if minutes < MAX_ROUNDS:  # a baseline cut short: its figures only
        return outcome
    if len(runs) != uploads:
        problems.append(f"{uploads - len(runs)} uploads have no run")
    ended = {RunState.LIVE, RunState.RETIRED}
    if any(r.state not in ended for r in runs):
        problems.append(f"runs not live or retired: {dict(outcome.states)}")
    submitted = Counter(sum(h["state"] == "submitted" for h in r.history) for r in runs)
    if set(submitted) != {1} or timed.creates != uploads:
        problems.append(f"submissions per run {dict(submitted)}, jobs created {timed.creates}")

    # Upload order, at the world's resolution (a minute): a run that was already queued is never
    # passed by a newer upload (within the burst's own minute, the order intake queued them decides).
    def at(record: Any, state: str) -> str:
        return next(h["at"] for h in record.history if h["state"] == state)

    ordered = sorted(runs, key=upload_order)
    passed = [
        (older.run_id, newer.run_id)
        for i, older in enumerate(ordered)
        for newer in ordered[i + 1 :]
        if at(older, "queued") < at(newer, "submitted") < at(older, "submitted")
    ]
    if passed:
        problems.append(f"{len(passed)} times a newer upload was submitted before a queued older one")
    if busiest > cap:
        problems.append(f"{busiest} jobs trained at once, above the cap of {cap}")
    if world.outcomes:
        problems.append(f"functions failed: {dict(world.outcomes)}")
    print(
        f"{uploads} uploads, cap {cap}: {world.clock} simulated minutes in {wall:.0f} s; {dict(outcome.states)}; "
        + ", ".join(f"peak {kind} {metered.peak(kind)[0]}/min" for kind in KINDS)
    )
    return outcome


def _row(label: str, outcome: Outcome, drained: bool = True) -> str:
    peaks = [outcome.metered.peak(kind)[0] for kind in KINDS]
    hours = f"{outcome.rounds / 60:.1f}" if drained else "-"
    return (
        f"| {label} | {outcome.busiest_training} | {hours} | "
        + " | ".join(
            f"{peak:,} ({peak / ARM_LIMITS_PER_MIN[kind]:.0%})" for peak, kind in zip(peaks, KINDS, strict=True)
        )
        + f" | {outcome.wall_s:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--uploads", type=int, default=1000, help="uploads in the burst (default 1000)")
    parser.add_argument("--cap", type=int, default=4, help="max_training_runs (default 4)")
    args = parser.parse_args(argv)

    print(about := machine())
    with azurite() as server:
        capped = simulate(server, args.uploads, args.cap)
        unbounded = simulate(server, args.uploads, BASELINE_CAP, minutes=BASELINE_MIN)
    per_run = {kind: sum(c[kind] for c in capped.metered.minutes.values()) / args.uploads for kind in KINDS}
    body = [
        header(f"python -m bench.admission_burst --uploads {args.uploads} --cap {args.cap}", about),
        "",
        f"{args.uploads:,} uploads land in one minute. Simulated on the world's clock with Azure's durations "
        f"(job spin-up {SPIN_UP_MIN[0]}-{SPIN_UP_MIN[1]} min, training {TRAIN_MIN[0]}-{TRAIN_MIN[1]} min, endpoint "
        f"{ENDPOINT_MIN} min, deployment {DEPLOYMENT_MIN} min); ARM requests metered per port call "
        f"(`ARM_REQUESTS`) and compared with what the subscription's token buckets refill per minute "
        f"(reads {ARM_LIMITS_PER_MIN['reads']:,}, writes {ARM_LIMITS_PER_MIN['writes']}, deletes "
        f"{ARM_LIMITS_PER_MIN['deletes']}).",
        "",
        "| run | most training at once | simulated hours to drain | peak reads/min (of limit) "
        "| peak writes/min | peak deletes/min | wall (s) |",
        "|---|--:|--:|--:|--:|--:|--:|",
        _row(f"`max_training_runs={args.cap}`", capped),
        _row(
            f"baseline: `max_training_runs={BASELINE_CAP}`, the most it takes (first {BASELINE_MIN} minutes)",
            unbounded,
            drained=False,
        ),
        "",
        f"With the cap: every run submitted once, in upload order, and live or retired at the end "
        f"({', '.join(f'{n} {s}' for s, n in sorted(capped.states.items()))}). ARM requests per run over its life: "
        + ", ".join(f"{per_run[kind]:.1f} {kind}" for kind in KINDS)
        + " (polls and the idle sweep included).",
    ]
    print(*body[-6:], sep="\n")
    missed = [f"with the cap: {problem}" for problem in capped.problems]
    for kind in KINDS:
        peak, minute = capped.metered.peak(kind)
        if peak > ARM_LIMITS_PER_MIN[kind]:
            missed.append(f"{peak} ARM {kind} in minute {minute}, above the {ARM_LIMITS_PER_MIN[kind]}/min refill")
    met = (
        f"The queue drained in upload order with at most {args.cap} training, nothing lost or submitted twice, "
        "and every minute inside ARM's per-subscription limits."
    )
    return publish("admission_burst", "Admission control under a burst", body, missed, met, docs=not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
