"""Where lifecycle events go: an Event Grid topic, a signed webhook, the local event log.

Each sink takes CloudEvents 1.0 in structured JSON (``envelope``) and either takes them all
or raises ``SinkError`` saying which it did take, so ``shared.publish`` resends only the rest.

* **Event Grid** (``FTPILOT_EVENTS_TOPIC_ENDPOINT``): ``azure-eventgrid``'s
  ``EventGridPublisherClient``, one publish call per batch, authenticated with the topic's
  key when one is set and otherwise with ``DefaultAzureCredential`` (the app's managed identity,
  which needs the EventGrid Data Sender role on the topic).
* **Webhook** (``FTPILOT_WEBHOOK_URL``): one POST per event, signed as the Standard Webhooks
  specification says (``webhook-id`` is the event id, so a receiver deduplicates retries on it).
* **Local event log** (the local platform only): ``<data dir>/events.jsonl``, one event a line,
  which ``up`` prints as it grows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from shared.lifecycle import SPEC_VERSION

if TYPE_CHECKING:
    from shared.config import Settings

EVENT_LOG = "events.jsonl"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
WEBHOOK_TIMEOUT_S = 10.0
_DELIVERY_FIELDS = ("sent", "attempts", "due_at", "error", "claim")


class SinkError(Exception):
    """A sink did not take every event: ``delivered`` are the ids it did take."""

    def __init__(self, message: str, delivered: Sequence[str] = (), retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.delivered = tuple(delivered)
        self.retry_after_s = retry_after_s


class Sink(Protocol):
    name: str

    def send(self, events: list[dict[str, Any]]) -> None:
        """Deliver every event (CloudEvents, structured) or raise ``SinkError``."""


def envelope(entry: dict[str, Any], source: str) -> dict[str, Any]:
    """The CloudEvent of an unsent entry: the same id, type, time and data on every try."""
    fields = {key: value for key, value in entry.items() if key not in _DELIVERY_FIELDS}
    return {"specversion": SPEC_VERSION, "source": source, "datacontenttype": "application/json", **fields}


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class WebhookSink:
    """POST each event to a URL, signed with Standard Webhooks' HMAC-SHA256 scheme."""

    name = "webhook"

    def __init__(self, url: str, secret: str, timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
        import requests
        from standardwebhooks import Webhook

        self.url = url
        self._signer = Webhook(secret)
        self._timeout_s = timeout_s
        self._session = requests.Session()

    def headers(self, event: dict[str, Any], body: bytes) -> dict[str, str]:
        # The signing time is when this try is made (the spec's replay window), not the event's time.
        stamp = datetime.fromtimestamp(int(time.time()), tz=UTC)
        return {
            "content-type": CONTENT_TYPE,
            "user-agent": "ftpilot",
            "webhook-id": event["id"],
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": self._signer.sign(event["id"], stamp, body.decode()),
        }

    def send(self, events: list[dict[str, Any]]) -> None:
        import requests

        delivered: list[str] = []
        for event in events:
            body = orjson.dumps(event)
            try:
                response = self._session.post(
                    self.url, data=body, headers=self.headers(event, body), timeout=self._timeout_s
                )
            except requests.RequestException as error:
                raise SinkError(f"webhook {self.url}: {type(error).__name__}: {error}", delivered) from None
            if not 200 <= response.status_code < 300:
                raise SinkError(
                    f"webhook {self.url} answered {response.status_code}", delivered, _retry_after(response.headers)
                )
            delivered.append(event["id"])


class EventGridSink:
    """Publish to an Event Grid custom topic (CloudEvents schema) with ``EventGridPublisherClient``."""

    name = "eventgrid"

    def __init__(self, endpoint: str, key: str | None = None, **client_options: Any) -> None:
        self.endpoint = endpoint
        self._key = key
        self._options = client_options
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from azure.eventgrid import EventGridPublisherClient

                if self._key:
                    from azure.core.credentials import AzureKeyCredential

                    credential: Any = AzureKeyCredential(self._key)
                else:
                    from shared.identity import credential as identity

                    credential = identity()
                self._client = EventGridPublisherClient(self.endpoint, credential, **self._options)
            return self._client

    def send(self, events: list[dict[str, Any]]) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError
        from azure.core.messaging import CloudEvent

        batch = [
            CloudEvent(
                source=event["source"],
                type=event["type"],
                data=event["data"],
                subject=event.get("subject"),
                id=event["id"],
                time=datetime.fromisoformat(event["time"]) if event.get("time") else None,
                datacontenttype=event.get("datacontenttype"),
            )
            for event in events
        ]
        try:
            self.client().send(batch)
        except HttpResponseError as error:
            headers = error.response.headers if error.response is not None else None
            message = f"Event Grid answered {error.status_code}: {error.message}"
            raise SinkError(message, (), _retry_after(headers)) from None
        except AzureError as error:
            raise SinkError(f"Event Grid: {type(error).__name__}: {error}") from None


class EventLog:
    """Append each event as a line of ``events.jsonl`` in the local workspace (what ``up`` prints)."""

    name = "log"
    _lock = threading.Lock()

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / EVENT_LOG

    def send(self, events: list[dict[str, Any]]) -> None:
        lines = b"".join(orjson.dumps(event) + b"\n" for event in events)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, lines)
            finally:
                os.close(fd)


def configured(settings: Settings) -> list[Sink]:
    """The sinks the settings name, in a fixed order."""
    sinks: list[Sink] = []
    if settings.events_topic_endpoint:
        sinks.append(EventGridSink(settings.events_topic_endpoint, settings.events_topic_key))
    if settings.webhook_url and settings.webhook_secret:
        sinks.append(WebhookSink(settings.webhook_url, settings.webhook_secret))
    if settings.platform == "local":
        sinks.append(EventLog(settings.data_dir))
    return sinks


def read_log(data_dir: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended to the local event log since ``offset`` (bytes), and the new offset (whole lines only)."""
    path = Path(data_dir) / EVENT_LOG
    if not path.is_file():
        return [], offset
    with path.open("rb") as file:
        file.seek(offset)
        chunk = file.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)
