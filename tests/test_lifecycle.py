"""Lifecycle events, end to end: from a run's changes of state to receivers over real HTTP.

The webhook receiver is a real HTTP server on loopback that verifies every request with the
Standard Webhooks reference library and fails the first requests it gets; the Event Grid
receiver checks a publish request the way Event Grid's publish API documents it, and is
called by the real ``EventGridPublisherClient``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from functions.lifecycle_events import lifecycle_events
from shared import publish
from shared.host.queues import deliver
from shared.lifecycle import transition_id
from shared.platform.port import JobStatus
from shared.reconcile import reconcile
from shared.runs import RunRecord, RunState, use_clock
from shared.services import Services, use_services
from shared.sinks import EventGridSink, SinkError, read_log
from tests.fakes.platform import WorkerKilled
from tests.test_rollout import complete, pump, submit

SECRET = "whsec_" + base64.b64encode(b"ftpilot-test-signing-key-0123456789").decode()
TOPIC_KEY = "topic-key-for-tests"
MAX_EVENT_GRID_BYTES = 1_048_576  # Event Grid's limit on one publish request


@dataclass
class Receiver:
    """What a loopback HTTP receiver was sent, and how it answered."""

    fail_first: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


@contextmanager
def serve(handle: Any, receiver: Receiver, path: str = "/hook") -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status, answer = handle(self, body, receiver)
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_port}{path}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def webhook_handler(handler: BaseHTTPRequestHandler, body: bytes, receiver: Receiver) -> tuple[int, bytes]:
    """Verify as a Standard Webhooks consumer does; fail the first ``fail_first`` requests with a 503."""
    headers = {key.lower(): value for key, value in handler.headers.items()}
    try:
        event = Webhook(SECRET).verify(body, headers)
    except Exception as error:
        with receiver.lock:
            receiver.refused.append(str(error))
        return 401, b'{"error": "bad signature"}'
    with receiver.lock:
        if receiver.fail_first > 0:
            receiver.fail_first -= 1
            return 503, b'{"error": "down for a moment"}'
        receiver.requests.append({"headers": headers, "event": event})
    return 204, b""


def event_grid_handler(handler: BaseHTTPRequestHandler, body: bytes, receiver: Receiver) -> tuple[int, bytes]:
    """Event Grid's publish API for a custom topic in CloudEvents schema, as its reference describes it."""

    def refuse(status: int, code: str, message: str) -> tuple[int, bytes]:
        with receiver.lock:
            receiver.refused.append(f"{status} {code}: {message}")
        return status, json.dumps({"error": {"code": code, "message": message}}).encode()

    path, _, query = handler.path.partition("?")
    if path != "/api/events" or "api-version=2018-01-01" not in query:
        return refuse(404, "NotFound", f"{handler.path} is not a topic's publish route")
    if handler.headers.get("aeg-sas-key") != TOPIC_KEY:
        return refuse(401, "Unauthorized", "the request's aeg-sas-key does not match the topic's keys")
    if not (handler.headers.get("content-type") or "").startswith("application/cloudevents-batch+json"):
        return refuse(
            400, "BadRequest", f"content type {handler.headers.get('content-type')} is not a CloudEvents batch"
        )
    if len(body) > MAX_EVENT_GRID_BYTES:
        return refuse(413, "RequestEntityTooLarge", "a publish request is at most 1 MB")
    events = json.loads(body)
    if not isinstance(events, list) or not events:
        return refuse(400, "BadRequest", "the body is not a non-empty array of events")
    for item in events:
        missing = [key for key in ("id", "source", "type", "specversion") if not item.get(key)]
        if missing or item["specversion"] != "1.0":
            return refuse(400, "BadRequest", f"event {item.get('id')} lacks {missing} or is not CloudEvents 1.0")
        if "time" in item:
            datetime.fromisoformat(item["time"].replace("Z", "+00:00"))
    with receiver.lock:
        receiver.requests.append({"headers": dict(handler.headers.items()), "events": events})
    return 200, b""


def with_sinks(services: Services, **changes: Any) -> Services:
    """The test's services with these event settings (and no backoff between tries, unless given)."""
    settings = services.settings.model_copy(update={"events_retry_base_s": 0, **changes})
    built = Services(settings, services.storage, services.platform)
    use_services(built)
    return built


def send_all(services: Services, rounds: int = 40) -> None:
    """Deliver the events queue (as the host does) until no run has unsent events left."""
    for _ in range(rounds):
        with suppress(WorkerKilled):
            deliver(services.storage.events_queue, lifecycle_events, visibility_timeout=1)
        if not list(services.runs.with_unsent()):
            return
        time.sleep(0.05)
    left = [(r.run_id, [e["type"] for e in r.unsent]) for r in services.runs.with_unsent()]
    raise AssertionError(f"events never sent: {left}")


def go_live(services: Services, fake, name: str = "incoming/chat.jsonl", start: int = 0) -> RunRecord:
    record = submit(services, name, start)
    fake.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake, record)
    pump(services)
    final = services.runs.get(record.run_id)
    assert final.state is RunState.LIVE, (final.state, final.reason)
    return final


def by_id(requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The receiver's view after deduplicating on the webhook id, as the spec tells receivers to."""
    return {request["headers"]["webhook-id"]: request["event"] for request in requests}


def test_a_run_reaches_a_signed_webhook_exactly_once_through_a_failing_receiver(services: Services, fake_platform):
    with serve(webhook_handler, Receiver(fail_first=3)) as receiver:
        services = with_sinks(services, webhook_url=receiver.url, webhook_secret=SECRET)
        first = go_live(services, fake_platform)
        second = go_live(services, fake_platform, start=100)  # replaces the first: it retires
        send_all(services)

    assert receiver.refused == []  # every request carried a valid signature
    seen = by_id(receiver.requests)
    kinds = sorted((event["data"]["run_id"], event["type"]) for event in seen.values())
    assert kinds == sorted(
        [
            (first.run_id, "ftpilot.run.submitted"),
            (first.run_id, "ftpilot.run.live"),
            (first.run_id, "ftpilot.run.retired"),
            (second.run_id, "ftpilot.run.submitted"),
            (second.run_id, "ftpilot.run.live"),
        ]
    )
    live = seen[f"{second.run_id}.live"]
    assert live["specversion"] == "1.0" and live["source"] == "/ftpilot" and live["subject"] == second.dataset
    assert live["data"]["scoring_uri"] == second.scoring_uri and live["data"]["model_id"] == second.model_id
    assert live["data"]["endpoint"] == second.endpoint
    assert "key" not in json.dumps(live).lower().replace("keys", "")  # never a key, in any field
    # The receiver failed three times: those events came again, with the same id, and nothing else twice.
    assert len(receiver.requests) == len(seen)
    assert all(request["headers"]["webhook-id"] == request["event"]["id"] for request in receiver.requests)
    # The local event log has each of them too.
    logged, _ = read_log(services.settings.data_dir)
    assert {event["id"] for event in logged} == set(seen)


def test_an_event_is_sent_again_after_a_kill_between_send_and_write_back(services: Services, fake_platform):
    """At least once: the receiver gets the event twice, with the same id, and dedupes it."""
    with serve(webhook_handler, Receiver()) as receiver:
        services = with_sinks(services, webhook_url=receiver.url, webhook_secret=SECRET)
        record = submit(services)
        real = services.runs.update
        calls = []

        def dies_on_write_back(run_id, change):
            calls.append(run_id)
            if len(calls) == 2:  # the first write claims the events, the second records the send
                raise WorkerKilled("after the send, before the write-back")
            return real(run_id, change)

        services.runs.update = dies_on_write_back  # type: ignore[method-assign]
        with suppress(WorkerKilled):
            publish.deliver(record.run_id, services)
        services.runs.update = real  # type: ignore[method-assign]
        assert publish.deliver(record.run_id, services).waiting == 1  # the dead sender's claim still holds
        later = datetime.now(UTC) + timedelta(seconds=publish.SEND_LEASE_S + 1)
        use_clock(lambda: later)
        try:
            assert [r.run_id for r in publish.overdue(services, 10)] == [record.run_id]
            send_all(services)
        finally:
            use_clock(None)
    ids = [request["headers"]["webhook-id"] for request in receiver.requests]
    assert ids == [f"{record.run_id}.submitted"] * 2


def test_every_failure_state_announces_itself_with_its_reason(services: Services, fake_platform):
    services = with_sinks(services)  # the local event log only
    record = submit(services)
    fake_platform.set_job(record.job_name, JobStatus.FAILED, error="CUDA out of memory")
    complete(services, fake_platform, record, status="Failed")
    pump(services)
    send_all(services)
    logged, _ = read_log(services.settings.data_dir)
    failed = next(event for event in logged if event["type"] == "ftpilot.run.failed")
    assert failed["id"] == f"{record.run_id}.failed"
    assert "CUDA out of memory" in failed["data"]["reason"]
    assert failed["data"]["job_name"] == record.job_name


def test_a_lost_wake_up_is_found_by_the_reconciler(services: Services, fake_platform, monkeypatch):
    services = with_sinks(services)
    monkeypatch.setattr(publish, "nudge", lambda *args, **kwargs: None)  # every queue send lost
    record = submit(services)
    assert [e["type"] for e in services.runs.get(record.run_id).unsent] == ["ftpilot.run.submitted"]
    monkeypatch.undo()
    checks = reconcile(services)
    assert any(check.action == "events" and check.run_id == record.run_id for check in checks)
    send_all(services)
    logged, _ = read_log(services.settings.data_dir)
    assert [event["id"] for event in logged] == [f"{record.run_id}.submitted"]


def test_an_event_no_sink_takes_is_dropped_after_its_ttl_and_noted(services: Services, fake_platform):
    with serve(webhook_handler, Receiver(fail_first=10_000)) as receiver:
        services = with_sinks(services, webhook_url=receiver.url, webhook_secret=SECRET, events_ttl_s=3600)
        record = submit(services)
        publish.deliver(record.run_id, services)
        pending = services.runs.get(record.run_id).unsent
        assert pending[0]["attempts"] == 1
        assert "answered 503" in pending[0]["error"]
        assert pending[0]["sent"] == ["log"]  # the log took it; only the webhook is owed it
        later = datetime.now(UTC) + timedelta(hours=2)
        use_clock(lambda: later)
        try:
            publish.deliver(record.run_id, services)
        finally:
            use_clock(None)
    stored = services.runs.get(record.run_id)
    assert stored.unsent == []
    assert (
        "ftpilot.run.submitted" in stored.history[-1]["note"] and "dropped after 2 tries" in stored.history[-1]["note"]
    )
    assert stored.state is RunState.SUBMITTED  # the run itself never noticed


def test_a_broken_sink_does_not_keep_the_others_from_their_events(services: Services, fake_platform):
    services = with_sinks(services, webhook_url="http://127.0.0.1:9/nothing-listens", webhook_secret=SECRET)
    record = submit(services)
    delivery = publish.deliver(record.run_id, services)
    assert (delivery.sent, delivery.waiting) == (0, 1)
    logged, _ = read_log(services.settings.data_dir)
    assert [event["id"] for event in logged] == [f"{record.run_id}.submitted"]
    assert services.runs.get(record.run_id).unsent[0]["sent"] == ["log"]


def test_event_grid_publish_through_the_real_publisher_client(services: Services, fake_platform):
    with serve(event_grid_handler, Receiver(), path="/api/events") as receiver:
        services = with_sinks(
            services, events_topic_endpoint=receiver.url, events_topic_key=TOPIC_KEY, platform="azureml"
        )
        assert [sink.name for sink in services.sinks] == ["eventgrid"]
        first = go_live(services, fake_platform)
        send_all(services)
    assert receiver.refused == []
    published = [event for request in receiver.requests for event in request["events"]]
    assert sorted(event["type"] for event in published) == ["ftpilot.run.live", "ftpilot.run.submitted"]
    assert all(event["source"] == "/ftpilot" and event["subject"] == first.dataset for event in published)
    assert {event["id"] for event in published} == {f"{first.run_id}.submitted", f"{first.run_id}.live"}


def test_event_grid_refusing_the_key_leaves_the_event_unsent(services: Services, fake_platform):
    with serve(event_grid_handler, Receiver(), path="/api/events") as receiver:
        sink = EventGridSink(receiver.url, "not-the-topic-key")
        with pytest.raises(SinkError, match="401"):
            sink.send([{"id": "x", "source": "/ftpilot", "type": "ftpilot.run.live", "data": {}, "time": ""}])
    assert receiver.refused == ["401 Unauthorized: the request's aeg-sas-key does not match the topic's keys"]


def test_without_a_key_event_grid_publishes_with_the_managed_identity():
    from azure.identity import DefaultAzureCredential

    client = EventGridSink("https://topic.westeurope-1.eventgrid.azure.net/api/events").client()
    assert isinstance(client._credential, DefaultAzureCredential)


def test_event_ids_name_the_run_and_the_transition():
    record = RunRecord(run_id="r1", dataset="incoming/a.jsonl", sha256="0" * 64)
    failed = record.moved(RunState.SUBMIT_FAILED, reason="quota")
    again = failed.moved(RunState.QUEUED).moved(RunState.SUBMIT_FAILED, reason="quota")
    assert transition_id(failed) == "r1.submit_failed"
    assert transition_id(replace(failed, updated_at="later")) == "r1.submit_failed"  # the same on every try
    assert transition_id(again) == "r1.submit_failed.2"  # a second failure is a second event
