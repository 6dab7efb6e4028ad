"""Structured logs: run keys as record fields, no secrets, and telemetry exported to Application Insights."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import function_app  # noqa: F401 - installs the record factory, as the worker's import does
from functions.intake import intake
from functions.rollout import run_events
from shared.logs import append_keys, bind, current, scrub
from shared.runs import RunState
from shared.services import Services
from tests.data import dataset
from tests.events import delivered, run_event
from tests.paths import REPO
from tests.test_intake import upload


def test_a_runs_log_lines_carry_its_keys_as_fields(
    services: Services, fake_platform, caplog: pytest.LogCaptureFixture
) -> None:
    client = upload(services, "incoming/keys.jsonl", dataset(40))
    with caplog.at_level(logging.INFO):
        intake(client)
    (record,) = services.runs.all()
    submitted = [r for r in caplog.records if "submitted as job" in r.getMessage()]
    assert submitted, [r.getMessage() for r in caplog.records]
    assert all(r.run_id == record.run_id for r in submitted)
    assert submitted[-1].ftpilot["job"] == record.job_name

    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_events(delivered(run_event(services.settings.topic, record.job_name, "Running", event_id="ev-1")))
    queued = [r for r in caplog.records if "queued for run" in r.getMessage()]
    assert queued and queued[0].event_id == "ev-1" and queued[0].run_id == record.run_id
    assert queued[0].job == record.job_name
    assert record.state is RunState.SUBMITTED
    assert current() == {}, "an invocation's keys end with it"


def test_keys_do_not_leak_between_invocations_on_a_reused_thread() -> None:
    seen: list[dict[str, str]] = []

    def invocation(run_id: str | None) -> None:
        if run_id:
            with append_keys(run_id=run_id):
                bind(job=f"job-{run_id}")
                seen.append(current())
        else:
            seen.append(current())

    with ThreadPoolExecutor(max_workers=1) as pool:  # the worker reuses its threads
        list(pool.map(invocation, ["a", None, "b"]))
    assert seen == [{"run_id": "a", "job": "job-a"}, {}, {"run_id": "b", "job": "job-b"}]
    with pytest.raises(ValueError, match="not a log key"), append_keys(runid="typo"):
        pass


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "https://app.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.intake&code=c2VjcmV0a2V5MTIz",
            "c2VjcmV0a2V5MTIz",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=bG9uZ2tleWJhc2U2NA==;Suffix=x",
            "bG9uZ2tleWJhc2U2NA",
        ),
        ("https://acct.blob.core.windows.net/c/b?sv=2024&sig=abcDEF123%2Bxyz", "abcDEF123"),
        ("Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.x.y", "eyJ0eXAiOiJKV1Qi"),
        ("webhook secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("endpoint key: primary_key=Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
    ],
)
def test_secrets_never_reach_a_handler(text: str, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.test"):
        logging.getLogger("shared.test").info("calling %s now", text)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "***" in line and secret not in line, line
    assert scrub("run 3f2a9c submitted as job ftpilot-3f2a9c") == "run 3f2a9c submitted as job ftpilot-3f2a9c"


class _Ingestion(BaseHTTPRequestHandler):
    """Application Insights' ingestion endpoint (v2.1/track): keeps every envelope it is sent."""

    received: list[dict[str, Any]] = []  # noqa: RUF012 - one server per test

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        envelopes = json.loads(body) if body.startswith(b"[") else [json.loads(line) for line in body.splitlines()]
        type(self).received.extend(envelopes)
        answer = json.dumps({"itemsReceived": len(envelopes), "itemsAccepted": len(envelopes), "errors": []})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args: Any) -> None:
        pass


EXPORTING = """
import logging, os, sys
from shared.logs import append_keys, install, telemetry
install()
assert "azure.monitor.opentelemetry" not in sys.modules
assert telemetry() is True
with append_keys(run_id="run-7", job="ftpilot-run-7", endpoint="ep-1"):
    logging.getLogger("shared.rollout").warning("rollout: run %s live with code=%s", "run-7", "c2VjcmV0a2V5MTIz")
from opentelemetry._logs import get_logger_provider
get_logger_provider().force_flush()
"""


def test_telemetry_goes_to_application_insights_with_the_keys_as_dimensions() -> None:
    """The real azure-monitor-opentelemetry exporter, in its own process, against a loopback ingestion endpoint."""
    _Ingestion.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingestion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/"
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={endpoint}"
            ),
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
        }
        result = subprocess.run(
            [sys.executable, "-c", EXPORTING], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.shutdown()
    messages = [e for e in _Ingestion.received if e.get("data", {}).get("baseType") == "MessageData"]
    assert messages, _Ingestion.received
    data = messages[0]["data"]["baseData"]
    assert data["message"] == "rollout: run run-7 live with code=***"
    assert {"run_id": "run-7", "job": "ftpilot-run-7", "endpoint": "ep-1"}.items() <= data["properties"].items()


def test_importing_the_app_loads_no_telemetry_sdk() -> None:
    code = (
        "import sys, function_app; "
        "print(any(m.startswith(('azure.monitor', 'opentelemetry.sdk')) for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "False", result.stderr
