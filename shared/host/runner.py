"""The local host: the same triggers Azure delivers, delivered to the same functions, on one machine.

Azurite stands in for the storage account and the local workspace for Azure ML. Each pass
delivers what is pending: new blobs in the intake container to the blob function, run
events from the workspace's outbox to the Event Grid function, queue messages to the
rollout workers and the lifecycle-event sender, and the idle sweep when its schedule says
so. What happens is printed as it happens, from the run records (the same records
``status`` shows) and from the local event log (the events a webhook receives).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared import azurite
from shared.config import Settings
from shared.host.blobs import BlobWatcher
from shared.host.calling import how_to_call
from shared.host.deliveries import event_grid, timer
from shared.host.queues import deliver
from shared.host.timer import Schedule
from shared.platform.local.keys import key_path
from shared.platform.local.layout import Layout
from shared.runs import FAILURES, RunRecord, RunState
from shared.services import Services, use_services
from shared.sinks import read_log
from shared.storage import Storage

log = logging.getLogger(__name__)
DEFAULT_PORTS = (10000, 10001, 10002)
# What a person wants to see of a finished job; status --json and MLflow have the rest.
HEADLINE_METRICS = ("train_loss", "eval_loss", "train_runtime", "epoch")


def storage_ports(connection: str | None) -> tuple[int, int, int] | None:
    """Loopback ports a connection string points at, or None when it names a real account (or there is none)."""
    if not connection:
        return None
    if connection.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        return DEFAULT_PORTS
    ports = []
    for service in ("Blob", "Queue", "Table"):
        match = re.search(rf"{service}Endpoint=https?://(?:127\.0\.0\.1|localhost):(\d+)", connection, re.IGNORECASE)
        if not match:
            return None
        ports.append(int(match.group(1)))
    return ports[0], ports[1], ports[2]


@dataclass
class RunPrinter:
    """Print each run's new history entries, metrics and endpoint as they appear."""

    out: Callable[[str], None] = print
    _seen: dict[str, int] = field(default_factory=dict)

    def skip(self, records: list[RunRecord]) -> None:
        """Treat what ``records`` already say as shown: a restarted host prints only what is new."""
        for record in records:
            self._seen[record.run_id] = len(record.history)

    def update(self, records: list[RunRecord], key_file: Callable[[str], Path | None]) -> None:
        """``key_file`` says where an endpoint's key is, for the commands printed when a run goes live."""
        for record in records:
            shown = self._seen.get(record.run_id, 0)
            for entry in record.history[shown:]:
                note = f" - {entry['note']}" if entry.get("note") else ""
                self.out(f"[{entry['at'][11:19]}] run {record.run_id[:8]} {record.dataset}: {entry['state']}{note}")
                if (
                    RunState(entry["state"]) in (*FAILURES, RunState.ROLLING_BACK, RunState.SUPERSEDED)
                    and record.reason
                ):
                    self.out(f"           reason: {record.reason}")
                if entry["state"] == "succeeded" and record.metrics:
                    shown = [k for k in HEADLINE_METRICS if k in record.metrics] or sorted(record.metrics)
                    metrics = ", ".join(f"{k}={record.metrics[k]:.4g}" for k in shown)
                    self.out(f"           metrics: {metrics}")
                if entry["state"] in ("promoting", "not_promoted") and record.promotion.get("report"):
                    report = record.promotion["report"].removesuffix(".json") + ".md"
                    self.out(f"           promotion gate: {record.promotion['decision']}; evidence in {report}")
                if entry["state"] == "live" and record.scoring_uri:
                    self.out(f"           endpoint {record.endpoint}: {record.scoring_uri}")
                    key = key_file(record.endpoint)
                    for line in how_to_call(record.scoring_uri, key) if key else []:
                        self.out(f"           {line}")
            self._seen[record.run_id] = len(record.history)


@dataclass
class EventPrinter:
    """Print each lifecycle event as the local event log receives it, once per event id."""

    data_dir: Path
    out: Callable[[str], None] = print
    _offset: int = 0
    _seen: set[str] = field(default_factory=set)

    def skip(self) -> None:
        """Treat what the log already holds as shown: a restarted host prints only new events."""
        events, self._offset = read_log(self.data_dir, self._offset)
        self._seen.update(event["id"] for event in events)

    def update(self) -> None:
        events, self._offset = read_log(self.data_dir, self._offset)
        for event in events:
            if event["id"] in self._seen:  # sent again after a lost write-back: shown already
                continue
            self._seen.add(event["id"])
            data = event.get("data", {})
            self.out(
                f"[{str(event.get('time', ''))[11:19]}] event {event['type']} "
                f"run {str(data.get('run_id', ''))[:8]} {data.get('dataset', '')} (id {event['id']})"
            )


def ensure_azurite(settings: Settings) -> azurite.Azurite | None:
    """Start Azurite (data under ``data_dir``) when the storage setting points at loopback and nothing listens.

    Returns the process this call started, for the caller to stop, or None when storage is
    a real account or an emulator is already running.
    """
    ports = storage_ports(settings.storage_account.connection_string)
    if ports is None or all(azurite.listening(p) for p in ports):
        return None
    return azurite.start(Path(settings.data_dir) / "azurite", ports)


class LocalHost:
    """Start with ``start()``, call ``step()`` (or ``run()`` until stopped), end with ``stop()``."""

    def __init__(self, settings: Settings, out: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.out = out
        self.printer = RunPrinter(out)
        self.events = EventPrinter(Path(settings.data_dir), out)
        self.stopping = threading.Event()
        self._azurite: azurite.Azurite | None = None
        self.services: Services | None = None

    def start(self) -> Services:
        from shared.platform.local import LocalPlatform

        settings = self.settings
        self._azurite = ensure_azurite(settings)
        if self._azurite is not None:
            started = self._azurite
            self.out(f"Azurite started on ports {started.blob_port}-{started.table_port} (data in {started.location})")
        storage = Storage(settings)
        storage.ensure()
        platform = LocalPlatform(settings)
        platform.recover()
        self.services = Services(settings, storage, platform)
        use_services(self.services)
        seen = Path(settings.data_dir) / "host-blobs.json"
        self._blobs = BlobWatcher(storage.container, settings.intake_prefix, seen)
        self._schedule = Schedule(settings.cleanup_schedule)
        self._reconcile = Schedule(settings.reconcile_schedule)
        earlier = list(self.services.runs.all())
        self.printer.skip(earlier)
        self.events.skip()
        if earlier:
            self.out(f"{len(earlier)} earlier run(s) on record: ftpilot status")
        self.out(
            f"ftpilot local host: watching {settings.intake_container}/{settings.intake_prefix}, "
            f"workspace in {settings.data_dir}"
        )
        return self.services

    def step(self) -> None:
        """Deliver everything pending once."""
        from functions.cleanup import cleanup
        from functions.intake import intake
        from functions.lifecycle_events import lifecycle_events
        from functions.reconcile import reconcile
        from functions.rollout import rollout, rollout_poison, run_events
        from shared.platform.local.outbox import drain_events

        services = self.services
        assert services is not None, "start() first"
        self._blobs.deliver(intake)
        services.platform.tick()
        for delivery in drain_events(Path(self.settings.data_dir)):
            for event in delivery.events:
                run_events(event_grid(event))
            delivery.ack()
        deliver(services.storage.queue, rollout, poison=services.storage.poison_queue, visibility_timeout=60)
        deliver(services.storage.poison_queue, rollout_poison, visibility_timeout=60)
        deliver(services.storage.events_queue, lifecycle_events, visibility_timeout=60)
        if self._schedule.due():
            cleanup(timer())
        if self._reconcile.due():
            reconcile(timer())
        self.printer.update(list(services.runs.all()), self._key_file)
        self.events.update()

    def _key_file(self, endpoint: str) -> Path:
        return key_path(Layout(Path(self.settings.data_dir).resolve()).keys, endpoint)

    def run(self, interval_s: float = 1.0) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception:
                log.exception("local host: a delivery pass failed; trying again")
            self.stopping.wait(interval_s)

    def stop(self) -> None:
        """Stop every process this host started; state stays on disk for the next start."""
        self.stopping.set()
        if self.services is not None:
            self.services.platform.shutdown()
            use_services(None)
        if self._azurite is not None:
            self._azurite.stop()
            self._azurite = None
            self.out("ftpilot local host stopped, with the Azurite it started; nothing left running.")
            return
        ports = storage_ports(self.settings.storage_account.connection_string)
        if ports is not None and azurite.listening(ports[0]):
            self.out(
                f"ftpilot local host stopped. Azurite on port {ports[0]} was running before it started "
                "and is left running."
            )
        else:
            self.out("ftpilot local host stopped; nothing of it left running.")
