"""Structured logs: what a line is about as fields, secrets never; OpenTelemetry when Azure asks for it.

In the spirit of Powertools' ``append_keys``: code that works on a run says so once,

    with append_keys(run_id=record.run_id, job=record.job_name, endpoint=record.endpoint):
        ...

and every record logged inside, by ftpilot or by the SDKs it calls, carries ``run_id``, ``job``,
``event_id``, ``endpoint`` and ``invocation_id`` as attributes (``record.ftpilot`` holds them all).
OpenTelemetry's log exporter turns record attributes into Application Insights custom
dimensions, so a query filters on ``customDimensions.run_id`` instead of parsing text.

Keys live in a context variable and each ``with`` restores what was there: the Functions worker
reuses its threads, and one invocation's keys must not leak into the next. Secrets are scrubbed
from every message (endpoint keys, SAS signatures, account keys, bearer tokens, webhook secrets,
function keys in URLs) before any handler sees it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

KEYS = ("run_id", "job", "event_id", "endpoint", "invocation_id")
_keys: ContextVar[dict[str, str]] = ContextVar("ftpilot_log_keys", default={})  # noqa: B039 (never mutated)
_SECRETS = re.compile(
    r"(?P<name>(?:code|sig|api[-_]?key|key|AccountKey|SharedAccessSignature|client_secret|password|token)\s*[=:]\s*)"
    r"(?P<value>[^\s&;,'\"]{6,})"
    r"|(?P<bearer>Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|whsec_[A-Za-z0-9+/=]{8,}",
    re.IGNORECASE,
)
_lock = threading.Lock()
_installed = False
_telemetry = False


def scrub(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``***``."""

    def hide(match: re.Match[str]) -> str:
        if match.group("name"):
            return f"{match.group('name')}***"
        if match.group("bearer"):
            return f"{match.group('bearer')}***"
        return "whsec_***"

    return _SECRETS.sub(hide, text)


@contextmanager
def append_keys(**keys: object) -> Iterator[None]:
    """Add ``keys`` (empty values ignored) to every record logged inside the block."""
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise ValueError(f"not a log key: {sorted(unknown)} (keys: {', '.join(KEYS)})")
    token = _keys.set({**_keys.get(), **{name: str(value) for name, value in keys.items() if value}})
    try:
        yield
    finally:
        _keys.reset(token)


def bind(**keys: object) -> None:
    """Add keys learnt part-way (a run id once the content is hashed) until the enclosing ``append_keys`` ends."""
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise ValueError(f"not a log key: {sorted(unknown)} (keys: {', '.join(KEYS)})")
    _keys.set({**_keys.get(), **{name: str(value) for name, value in keys.items() if value}})


def current() -> dict[str, str]:
    """The keys in effect here."""
    return dict(_keys.get())


def _worker_invocation() -> str | None:
    """The invocation the Functions Python worker runs on this thread (it tracks it for its own logs).

    Read only inside the worker; its module layout is the worker's own, so any surprise means None.
    """
    worker = sys.modules.get("azure_functions_worker.dispatcher")
    find = getattr(worker, "get_current_invocation_id", None)
    try:
        return find() if find else None
    except Exception:
        return None


def install() -> None:
    """Make every log record carry the keys and lose its secrets (once per process; cheap, no imports)."""
    global _installed  # noqa: PLW0603 - once per process
    with _lock:
        if _installed:
            return
        make = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            keys = _keys.get()
            if "invocation_id" not in keys and (invocation := _worker_invocation()):
                keys = {**keys, "invocation_id": invocation}
            record.ftpilot = dict(keys)
            for name, value in keys.items():
                setattr(record, name, value)
            if record.args or isinstance(record.msg, str):
                try:
                    message = record.getMessage()
                except (TypeError, ValueError):  # let the handler report a malformed call as it always does
                    return record
                cleaned = scrub(message)
                if cleaned != message or record.args:
                    record.msg, record.args = cleaned, None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def telemetry() -> bool:
    """Send traces, logs and metrics to Application Insights when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set.

    Called on the first invocation, not at import: ``azure-monitor-opentelemetry`` costs more than
    the whole app's cold start. With ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``
    (``ClientId=...;Authorization=AAD``, as infra/ftpilot.json sets it) it authenticates with that
    managed identity, since the template turns local (key) authentication off.
    """
    global _telemetry  # noqa: PLW0603 - once per process
    connection = os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if not connection:
        return False
    with _lock:
        if _telemetry:
            return True
        from azure.monitor.opentelemetry import configure_azure_monitor

        options: dict[str, Any] = {"connection_string": connection, "logger_name": "shared"}
        auth = dict(
            part.split("=", 1)
            for part in os.environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").split(";")
            if "=" in part
        )
        if auth.get("Authorization", "").upper() == "AAD":
            from shared.identity import credential

            options["credential"] = credential(auth.get("ClientId") or None)
        configure_azure_monitor(**options)
        _telemetry = True
        return True
