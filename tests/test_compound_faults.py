"""Many runs through every function at once, under a seeded mix of faults; then the guarantees.

See ``tests/faults.py`` for what goes wrong. Each seed uploads several versions of three
datasets (so rollouts contend for endpoints), duplicates and repeats uploads, lets jobs
finish or fail, loses, duplicates and reorders their events, has clients call the endpoints
now and then, runs the idle sweep and the reconciler in between, and restarts Azurite once.
Then faults stop, and the world runs until nothing is left to do. What must hold:

- one job per content, one model version per job;
- at most one live run and one traffic-taking deployment per endpoint;
- where runs on an endpoint succeeded, the newest of them is the live one;
- every run is terminal or live; every queue is empty;
- no endpoint or deployment is left without the live run that owns it;
- no history holds an illegal transition, and no illegal write was even attempted;
- nothing a user reads (reasons, errors, status) holds a traceback;
- every endpoint the sweep deleted retired its live run as an idle deletion, however the
  delete's answer was lost.

Then the faults come back while the endpoints go idle (clients call them for a while, then
stop), so that the sweep announces and deletes under them; then they stop again. Every
endpoint must go, every live run retire with its event sent, no lease stay held, and all of
the above still hold.

``FTPILOT_FAULT_SEEDS`` (e.g. ``1-200``) runs more seeds than the default set.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from azure.functions.timer import TimerRequest

from functions.cleanup import cleanup
from functions.intake import intake
from functions.lifecycle_events import lifecycle_events
from functions.reconcile import reconcile
from functions.rollout import rollout, rollout_poison, run_events
from shared import azurite as azurite_mod
from shared.config import Settings
from shared.leases import order
from shared.lifecycle import TRANSITION_EVENTS
from shared.naming import RUN_TAG, endpoint_name
from shared.platform.port import JobStatus
from shared.runs import HISTORY_LIMIT, TRANSITIONS, RunState, use_clock
from shared.services import Services, use_services
from shared.sinks import EventLog, read_log
from shared.status import rows
from tests.data import dataset
from tests.events import delivered, run_event
from tests.fakes.platform import FakePlatform
from tests.faults import Delivery, Faults, FaultyPlatform, FaultySink, SimStorage, World

DATASETS = ("incoming/alpha.jsonl", "incoming/beta.jsonl", "incoming/gamma.jsonl")
FAULT_ROUNDS = 45
SETTLE_ROUNDS = 80
RESTART_ROUND = 20
IDLE_WINDOW_S = 480  # 8 rounds: announced after 6 without a call, deleted 2 later
IDLE_FAULT_ROUNDS = 30  # clients call during the first quarter
QUIET_ROUNDS = 40


def _seeds() -> list[int]:
    spec = os.environ.get("FTPILOT_FAULT_SEEDS", "1-10")
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[azurite_mod.Azurite]:
    """An Azurite of this module's own, with its data on disk, so a restart keeps it."""
    server = azurite_mod.start(tmp_path_factory.mktemp("azurite-faults"))
    yield server
    server.stop(grace_s=0.5)


def restart(server: azurite_mod.Azurite) -> None:
    # Azurite autosaves every few seconds and ignores SIGTERM once it has served: wait, then stop.
    server.stop(grace_s=6)
    fresh = azurite_mod.start(server.location, (server.blob_port, server.queue_port, server.table_port))
    server.process = fresh.process


class Scenario:
    def __init__(self, seed: int, server: azurite_mod.Azurite, tmp_path) -> None:
        self.rng = random.Random(seed)
        self.faults = Faults(random.Random(seed * 7919 + 1))
        self.world = World(self.faults, self.rng)
        self.server = server
        suffix = f"s{seed}x{uuid.uuid4().hex[:8]}"  # names only: nothing decides by them
        self.settings = Settings(
            storage=server.connection_string,
            intake_container=f"data-{suffix}",
            runs_table=f"runs{suffix}",
            rollout_queue=f"rollout-{suffix}",
            events_queue=f"events-{suffix}",
            data_dir=tmp_path / "ftpilot",
            min_examples_warning=10,
            poll_interval_s=60,
            retry_base_s=30,
            retry_cap_s=300,
            deploy_timeout_s=7200,
            cleanup_grace_s=0,
            idle_window_s=IDLE_WINDOW_S,
            reconcile_training_s=600,
            reconcile_rollout_s=300,
            reconcile_intake_s=600,
            cleanup_concurrency=1,
            reconcile_concurrency=1,
            events_retry_base_s=30,
            events_retry_cap_s=300,
        )
        self.fake = FakePlatform()
        storage = SimStorage(self.settings, self.world)
        self.faults.on = False
        storage.ensure()
        self.faults.on = True
        self.services = Services(self.settings, storage, FaultyPlatform(self.fake, self.faults))
        # Lifecycle events go to the local event log, through a sink that fails as webhooks do.
        self.services.sinks = [FaultySink(EventLog(self.settings.data_dir), self.faults)]
        self.blobs: list[Delivery] = []
        self.events: list[Delivery] = []
        self.event_ids = 0
        self.deleted_under_faults: set[str] = set()
        self.calling = True  # clients call endpoints now and then
        self.uploads = self._plan()

    def _plan(self) -> dict[int, list[tuple[str, bytes]]]:
        """Which round uploads what: 2-3 versions per dataset, a copy under another name, all early."""
        plan: dict[int, list[tuple[str, bytes]]] = {}
        for index, name in enumerate(DATASETS):
            for version in range(self.rng.choice((2, 3))):
                at = self.rng.randrange(0, FAULT_ROUNDS // 2)
                plan.setdefault(at, []).append((name, dataset(20, start=index * 1000 + version * 100)))
        first_at = min(plan)
        copy_of = plan[first_at][0][1]
        plan.setdefault(first_at, []).append(("incoming/alpha-copy.jsonl", copy_of))  # same content, other name
        return plan

    # One round of the world --------------------------------------------------------------
    def round(self) -> None:
        world, rng = self.world, self.rng
        world.clock += 1
        for name, content in self.uploads.get(world.clock, []):
            self.services.storage.blob(name).upload_blob(content, overwrite=True)
            for _ in range(rng.choice((1, 1, 2))):  # blob triggers fire at least once
                self.blobs.append(Delivery("intake", name, visible_at=world.clock))
        self.blobs = world.deliver_all(
            self.blobs, lambda name: intake(self.services.storage.blob(name)), max_attempts=5
        )
        self._move_jobs()
        self.events = world.deliver_all(self.events, lambda event: run_events(delivered(event)), max_attempts=4)
        self._call_endpoints()
        storage = self.services.storage
        world.deliver_queue(storage.queue, rollout, storage.poison_queue)
        world.deliver_queue(storage.poison_queue, rollout_poison, None)
        world.deliver_queue(storage.events_queue, lifecycle_events, None)
        if world.clock % 3 == 0:
            world.run(lambda: cleanup(TimerRequest(past_due=False)), "cleanup")
            if self.faults.on:
                self.deleted_under_faults |= self.fake.deleting()
        if world.clock % 2 == 0:
            world.run(lambda: reconcile(TimerRequest(past_due=False)), "reconcile")

    def _move_jobs(self) -> None:
        """The platform's side: jobs start and finish; their events are lost, repeated or late."""
        for job in list(self.fake.jobs.values()):
            if job.status is JobStatus.QUEUED and self.rng.random() < 0.5:
                self.fake.set_job(job.name, JobStatus.RUNNING)
                self._emit(job.name, "Running")
            elif job.status is JobStatus.RUNNING and (self.rng.random() < 0.3 or not self.faults.on):
                failed = self.rng.random() < 0.15 and self.faults.on
                status = JobStatus.FAILED if failed else JobStatus.COMPLETED
                self.fake.set_job(job.name, status, "OOM" if failed else None)
                self._emit(job.name, "Failed" if failed else "Completed")

    def _call_endpoints(self) -> None:
        """Clients call each endpoint now and then: most stay busy, some are announced, some deleted."""
        if not self.calling:
            return
        for name in sorted(self.fake.standing()):
            if self.rng.random() < 0.3:
                self.fake.endpoints[name].request_times.append(self.world.time())
                self.world.outcomes["client calls"] += 1

    def _emit(self, job: str, status: str) -> None:
        if self.faults.on and self.rng.random() < 0.25:
            self.world.outcomes["event lost"] += 1
            return
        copies = 2 if self.faults.on and self.rng.random() < 0.25 else 1
        for _ in range(copies):
            self.event_ids += 1
            event = run_event(self.settings.topic, job, status, event_id=f"e{self.event_ids}")
            late = self.rng.randrange(0, 3) if self.faults.on else 0
            self.events.append(Delivery("event", event, visible_at=self.world.clock + late))

    def settled(self) -> bool:
        storage = self.services.storage
        if self.blobs or self.events or len(storage.queue) or len(storage.poison_queue):
            return False
        return all(r.state.settled and not r.unsent for r in self.services.runs.all())

    def play(self) -> None:
        with self.using():
            for _ in range(FAULT_ROUNDS):
                if self.world.clock == RESTART_ROUND:
                    restart(self.server)
                self.round()
            self.faults.on = False
            for _ in range(SETTLE_ROUNDS):
                self.round()
                if self.settled():
                    break

    def go_idle(self) -> None:
        """Faults while the endpoints go idle, then quiet until every endpoint is gone and every lease free.

        A sweep killed while it held a lease leaves it to the reconciler, which frees it after
        ``SWEEP_LEASE_S``: ten rounds of the world.
        """
        with self.using():
            self.faults.on = True
            for index in range(IDLE_FAULT_ROUNDS):
                self.calling = index < IDLE_FAULT_ROUNDS // 4
                self.round()
            self.faults.on = self.calling = False
            for _ in range(QUIET_ROUNDS):
                self.round()
                if self._all_gone():
                    break

    def _all_gone(self) -> bool:
        """No endpoint, no live run (the sweep's next tick retires one whose endpoint went), no lease held."""
        if self.fake.endpoints or not self.settled() or self.services.leases.taken():
            return False
        return not any(r.state is RunState.LIVE for r in self.services.runs.all())

    @contextmanager
    def using(self) -> Iterator[None]:
        use_services(self.services)
        use_clock(self.world.time)
        try:
            yield
        finally:
            use_clock(None)
            use_services(None)


def check(scenario: Scenario) -> Counter[str]:
    """Assert every guarantee; return the counts to print."""
    fake, services = scenario.fake, scenario.services
    runs = list(services.runs.all())
    by_id = {r.run_id: r for r in runs}
    stuck = {
        r.run_id: (r.state, r.waiting_for, r.last_error, r.poll_token, r.poll_due_at, r.checked_at)
        for r in runs
        if not r.state.settled
    }
    queued = [m.content for m in scenario.services.storage.queue.messages.values()]
    assert not stuck, f"runs neither terminal nor live: {stuck}; queued: {queued}"
    assert scenario.settled(), "queues or deliveries left"

    submitted = [r for r in runs if r.job_name]
    assert fake.creates == len({r.job_name for r in submitted}) == len(fake.jobs), "one job per content"
    per_job = Counter(m.tags.get("ftpilot-job") for m in fake.models.values())
    assert all(n == 1 for n in per_job.values()), f"one model version per job: {per_job}"
    assert len({m.tags[RUN_TAG] for m in fake.models.values()}) == len(fake.models)

    standing = fake.standing()
    for name in standing:
        endpoint = fake.endpoints[name]
        live = [r for r in runs if r.endpoint == name and r.state is RunState.LIVE]
        assert len(live) == 1, f"endpoint {name} has {len(live)} live runs and still exists"
        assert set(endpoint.deployments) == {live[0].deployment}, f"{name}: deployments without a live run"
        taking = [d for d, share in endpoint.info.traffic.items() if share]
        assert taking == [live[0].deployment], f"{name}: traffic {endpoint.info.traffic}"
    for name in {endpoint_name(d) for d in (*DATASETS, "incoming/alpha-copy.jsonl")}:
        mine = [r for r in runs if endpoint_name(r.dataset) == name]
        live = [r for r in mine if r.state is RunState.LIVE]
        assert len(live) <= 1
        if live:
            assert live[0].endpoint in standing, "a live run whose endpoint is gone or going"
            succeeded = [r for r in mine if r.state in (RunState.LIVE, RunState.RETIRED, RunState.SUPERSEDED)]
            newer = [r.run_id for r in succeeded if order(r) > order(live[0]) and r.state is not RunState.SUPERSEDED]
            assert not newer, f"{name}: newer successful runs {newer} than the live {live[0].run_id}"

    for record in runs:
        states = [RunState(h["state"]) for h in record.history]
        for before, after in itertools.pairwise(states):
            assert after is before or after in TRANSITIONS[before], f"{record.run_id}: {before} -> {after}"
        for text in (record.reason, record.last_error, record.waiting_for):
            assert "Traceback" not in text and 'File "' not in text, text
        if record.state.failure or record.state is RunState.SUPERSEDED:
            assert record.reason, f"{record.run_id} ended {record.state} without a reason"
        # Transient trouble is never permanent: only what the world really did ends a run badly.
        if record.state is RunState.FAILED:
            assert fake.jobs[record.job_name].status is JobStatus.FAILED, f"{record.run_id}: {record.reason}"
        if record.state is RunState.ROLLED_BACK:
            assert "smoke test failed" in record.reason, f"{record.run_id}: {record.reason}"
        # Nobody but the sweep deletes endpoints here: a lost answer must not read as someone else's delete.
        assert "deleted outside ftpilot" not in record.reason, f"{record.run_id}: {record.reason}"
        assert record.state is not RunState.SUBMIT_FAILED, f"{record.run_id}: {record.reason}"
    for row in rows(runs):
        assert "Traceback" not in row.reason

    # Every change of state that makes an event reached the sink: at least once, exactly once by id.
    logged, _ = read_log(scenario.settings.data_dir)
    ids = Counter(event["id"] for event in logged)
    for record in runs:
        expected, seen, previous = set(), Counter(), None
        for entry in record.history:
            state = RunState(entry["state"])
            if state is not previous and state in TRANSITION_EVENTS:
                seen[state] += 1
                expected.add(f"{record.run_id}.{state}" + (f".{seen[state]}" if seen[state] > 1 else ""))
            previous = state
        mine = {i for i in ids if i.startswith(f"{record.run_id}.")}
        notices = {i for i in mine if ".idle_deletion_scheduled." in i or ".idle_deleted." in i}
        assert expected <= mine, f"{record.run_id}: events never sent: {sorted(expected - mine)}"
        if len(record.history) < HISTORY_LIMIT:  # a full history may have lost its first changes
            unmade = sorted(mine - notices - expected)
            assert not unmade, f"{record.run_id}: events for changes not made: {unmade}"
    assert all(by_id[r.run_id].state is r.state for r in runs)

    counts = Counter(f"run {r.state}" for r in runs)
    counts["events sent"] = len(ids)
    counts["events sent again"] = sum(ids.values()) - len(ids)
    counts.update(scenario.faults.injected)
    counts.update(scenario.world.outcomes)
    return counts


@pytest.mark.parametrize("seed", _seeds())
def test_runs_converge_under_compound_faults(seed: int, own_azurite, tmp_path, caplog, capsys) -> None:
    caplog.set_level(logging.ERROR, logger="shared.runs")
    scenario = Scenario(seed, own_azurite, tmp_path)
    scenario.play()
    if os.environ.get("FTPILOT_FAULT_VERBOSE"):
        for r in scenario.services.runs.all():
            print(r.run_id[:8], r.dataset, r.state, "|", r.reason[:200], "|", [h["state"] for h in r.history])
    counts = check(scenario)
    scenario.go_idle()
    check(scenario)
    assert not scenario.fake.endpoints, f"still billing after a quiet idle window: {sorted(scenario.fake.endpoints)}"
    assert not [r.run_id for r in scenario.services.runs.all() if r.state is RunState.LIVE]
    assert not scenario.services.leases.taken(), "a lease is still held"
    idle_deleted = Counter(e["type"] for e in read_log(scenario.settings.data_dir)[0])["ftpilot.run.idle_deleted"]
    counts["idle deletions"] = idle_deleted
    refused = [r.getMessage() for r in caplog.records if "refused to write" in r.getMessage()]
    assert not refused, f"illegal transitions were attempted: {refused}"
    injected = sum(v for k, v in counts.items() if k.split(" ")[0] in ("before", "after", "kill"))
    assert injected > 50, "the faults did not happen"
    with capsys.disabled():
        states = ", ".join(f"{k[4:]} {v}" for k, v in sorted(counts.items()) if k.startswith("run "))
        kinds = Counter()
        for key, value in counts.items():
            if key.split(" ")[0] in ("before", "after", "kill"):
                kinds[key.split(" ")[0]] += value
        print(
            f"\nseed {seed}: rounds {scenario.world.clock}; runs: {states}; faults injected: "
            f"{dict(kinds)}; events lost {counts['event lost']}; to poison "
            f"{sum(v for k, v in counts.items() if k.endswith('to poison'))}; lifecycle events "
            f"{counts['events sent']} ({counts['events sent again']} sent again); idle deletions "
            f"{counts['idle deletions']} (of them under faults {len(scenario.deleted_under_faults)}); "
            f"client calls {counts['client calls']}"
        )
