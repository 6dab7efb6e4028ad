"""A seeded world of compound faults around the real entry points.

The functions under test are the real ones (intake, the Event Grid trigger, the rollout and
poison workers, the idle sweep, the reconciler), over a real Azurite table and container
and the service-like fake platform. Around them, everything the cloud can do wrong, drawn
from one seeded generator:

- every platform call may fail transiently before or after it takes effect, or the worker
  may be killed right after it (``WorkerKilled`` is a BaseException: no ``except Exception``
  in the code under test can swallow it, as no code survives a dead process);
- every table read may fail, every table write may be followed by a kill;
- every queue send may fail, fail after the message was stored, or be followed by a kill;
- events are lost, duplicated and delivered out of order; blob triggers repeat;
- the queue behaves like Storage queues under the Functions host: at-least-once, a message
  whose handler fails or dies reappears after its visibility timeout, and after five
  attempts it moves to the poison queue, whose own failures are retried and then dropped.

The world keeps its own clock (a minute per round), which every deadline and cadence in the
code under test reads; faults are drawn in call order, and the world delivers one thing at a
time in an order drawn from its generator. So a seed replays the same run exactly under one
``PYTHONHASHSEED`` (the order of set iteration differs between hash seeds).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import azure.functions as func
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.functions.queue import QueueMessage as DeliveredMessage

from shared.platform.port import TransientError
from shared.storage import Storage
from tests.fakes.platform import WorkerKilled

MAX_DEQUEUE = 5
VISIBILITY_ROUNDS = 2
ROUND_S = 60  # each round of the world is a minute of its clock
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PLATFORM_METHODS = (
    "submit_finetune",
    "get_job",
    "begin_cancel_job",
    "get_job_metrics",
    "register_model",
    "get_model",
    "tag_model",
    "get_endpoint",
    "list_endpoints",
    "begin_create_endpoint",
    "get_deployment",
    "list_deployments",
    "begin_create_deployment",
    "begin_set_traffic",
    "begin_delete_deployment",
    "begin_delete_endpoint",
    "invoke",
    "open_scoring",
    "endpoint_requests",
)


@dataclass
class Faults:
    """Draws what goes wrong, and counts what it injected."""

    rng: random.Random
    rate: float = 0.2
    on: bool = True
    injected: Counter[str] = field(default_factory=Counter)

    def draw(self, site: str, kinds: tuple[str, ...] = ("before", "after", "kill")) -> str:
        if not self.on or self.rng.random() >= self.rate:
            return ""
        kind = self.rng.choice(kinds)
        self.injected[f"{kind} {site}"] += 1
        return kind


class FaultyPlatform:
    """The port, with transient errors before or after each call's effect and kills after it."""

    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        return self._faulty(name, method) if name in PLATFORM_METHODS else method

    def _faulty(self, name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            kind = self.faults.draw(f"platform.{name}")
            if kind == "before":
                raise TransientError(f"injected 503 from {name}", retry_after_s=0)
            result = method(*args, **kwargs)
            if kind == "after":
                raise TransientError(f"injected timeout after {name} took effect")
            if kind == "kill":
                raise WorkerKilled(f"after {name}")
            if name == "open_scoring":  # its calls are invokes, and fail as invokes do
                return self._faulty("invoke", result)
            return result

        return call


class FaultySink:
    """A lifecycle-event sink that may refuse a batch, take it and fail to say so, or kill the sender."""

    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner = inner
        self.name = inner.name
        self.faults = faults

    def send(self, events: list[dict[str, Any]]) -> None:
        from shared.sinks import SinkError

        kind = self.faults.draw(f"sink.{self.name}")
        if kind == "before":
            raise SinkError(f"injected: the {self.name} sink answered 503")
        self.inner.send(events)
        if kind == "after":
            raise SinkError(f"injected: the {self.name} sink timed out after taking the events")
        if kind == "kill":
            raise WorkerKilled(f"after sending to {self.name}")


class FaultyTable:
    """A real TableClient whose reads may fail and whose writes may be followed by a kill."""

    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name in ("get_entity", "query_entities"):

            def read(*args: Any, **kwargs: Any) -> Any:
                if self.faults.draw(f"table.{name}", ("before",)):
                    raise ServiceRequestError(f"injected: table {name} failed")
                return method(*args, **kwargs)

            return read
        if name in ("create_entity", "update_entity", "delete_entity"):

            def write(*args: Any, **kwargs: Any) -> Any:
                kind = self.faults.draw(f"table.{name}", ("before", "kill"))
                if kind == "before":
                    raise ServiceRequestError(f"injected: table {name} failed")
                result = method(*args, **kwargs)
                if kind == "kill":
                    raise WorkerKilled(f"after table {name}")
                return result

            return write
        return method


@dataclass
class _Message:
    id: int
    content: bytes
    visible_at: int
    dequeue_count: int = 0


class SimQueue:
    """A Storage queue as the Functions host uses it, on the world's clock (rounds)."""

    def __init__(self, name: str, world: World) -> None:
        self.queue_name = name
        self.world = world
        self.messages: dict[int, _Message] = {}
        self._ids = 0

    def create_queue(self) -> None:
        return None

    def send_message(self, content: bytes, visibility_timeout: int | None = None) -> None:
        kind = self.world.faults.draw(f"queue.send {self.queue_name}")
        if kind == "before":
            raise ServiceRequestError("injected: queue send failed")
        self._ids += 1
        delay = math.ceil((visibility_timeout or 0) / ROUND_S)
        self.messages[self._ids] = _Message(self._ids, bytes(content), self.world.clock + delay)
        if kind == "after":
            raise ServiceResponseError("injected: queue send timed out after the message was stored")
        if kind == "kill":
            raise WorkerKilled("after queue send")

    def visible(self) -> list[_Message]:
        return [m for m in self.messages.values() if m.visible_at <= self.world.clock]

    def __len__(self) -> int:
        return len(self.messages)


class SimStorage(Storage):
    """The real container and table (Azurite), the simulated queues, faults on table and queue."""

    def __init__(self, settings: Any, world: World) -> None:
        super().__init__(settings)
        self.world = world

    @cached_property
    def _real_table(self) -> Any:
        from azure.data.tables import TableClient

        # No SDK retries: a dead emulator fails fast and the world's redelivery is the retry.
        return TableClient.from_connection_string(
            self.settings.storage_account.connection_string, self.settings.runs_table, retry_total=0
        )

    @property
    def table(self) -> Any:  # type: ignore[override]
        return FaultyTable(self._real_table, self.world.faults)

    @cached_property
    def queue(self) -> SimQueue:  # type: ignore[override]
        return SimQueue(self.settings.rollout_queue, self.world)

    @cached_property
    def poison_queue(self) -> SimQueue:  # type: ignore[override]
        return SimQueue(f"{self.settings.rollout_queue}-poison", self.world)

    @cached_property
    def events_queue(self) -> SimQueue:  # type: ignore[override]
        return SimQueue(self.settings.events_queue, self.world)


@dataclass
class Delivery:
    """Something a trigger delivers at least once (a blob, an event) and retries when its function fails."""

    what: str
    payload: Any
    attempts: int = 0
    visible_at: int = 0


@dataclass
class World:
    faults: Faults
    rng: random.Random
    clock: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    tracebacks: list[str] = field(default_factory=list)

    def time(self) -> datetime:
        """The world's clock, which the code under test reads through ``shared.runs.use_clock``."""
        return EPOCH + timedelta(seconds=self.clock * ROUND_S)

    def run(self, handler: Callable[[], Any], what: str) -> bool:
        """Call one function as the host would; True when it returned."""
        try:
            handler()
        except WorkerKilled:
            self.outcomes[f"{what}: killed"] += 1
            return False
        except Exception as error:  # the host logs and retries; nothing of it reaches a user
            self.outcomes[f"{what}: {type(error).__name__}"] += 1
            return False
        self.outcomes[f"{what}: ok"] += 1
        return True

    def deliver_queue(self, queue: SimQueue, handler: Callable[[func.QueueMessage], None], poison: SimQueue | None):
        """Deliver every visible message once, in a drawn order, the way the Functions host does."""
        batch = queue.visible()
        self.rng.shuffle(batch)
        for message in batch:
            if message.id not in queue.messages:
                continue
            message.dequeue_count += 1
            message.visible_at = self.clock + VISIBILITY_ROUNDS
            delivered = DeliveredMessage(
                id=str(message.id), body=message.content, dequeue_count=message.dequeue_count, pop_receipt="p"
            )
            if self.run(lambda d=delivered: handler(d), queue.queue_name):
                queue.messages.pop(message.id, None)
            elif message.dequeue_count >= MAX_DEQUEUE:
                queue.messages.pop(message.id, None)
                if poison is not None:  # the host's own move: not subject to the injected faults
                    poison._ids += 1
                    poison.messages[poison._ids] = _Message(poison._ids, message.content, self.clock)
                self.outcomes[f"{queue.queue_name}: to poison" if poison else f"{queue.queue_name}: dropped"] += 1

    def deliver_all(self, pending: list[Delivery], handler: Callable[[Any], None], max_attempts: int) -> list[Delivery]:
        """Deliver what is due in a drawn order; return what must be tried again."""
        due = [d for d in pending if d.visible_at <= self.clock]
        later = [d for d in pending if d.visible_at > self.clock]
        self.rng.shuffle(due)
        for delivery in due:
            delivery.attempts += 1
            if not self.run(lambda d=delivery: handler(d.payload), delivery.what):
                if delivery.attempts < max_attempts:
                    delivery.visible_at = self.clock + VISIBILITY_ROUNDS
                    later.append(delivery)
                else:
                    self.outcomes[f"{delivery.what}: given up"] += 1
        return later
