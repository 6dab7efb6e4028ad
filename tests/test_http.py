"""The adapter's own HTTP calls against real local servers: scoring a deployment, reading MLflow metrics."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from shared.platform.azureml import AzureMLPlatform
from shared.platform.azureml.metrics import MlflowRestMetricsReader, api_base
from shared.platform.http import RETRIES
from shared.platform.port import EndpointRequest, NotFoundError, PlatformConfigError, PlatformError, TransientError
from tests.azure_wire.workspace import Wire

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

ENDPOINT = "ftpilot-chat"
KEY = f"key-of-{ENDPOINT}-0123456789"  # what the emulated workspace's listKeys hands out for this endpoint

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    method: str
    path: str
    headers: Message  # case-insensitive, as HTTP header names are
    body: bytes


@dataclass
class Server:
    url: str
    seen: list[Seen] = field(default_factory=list)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (the timeout test) is expected; keep its broken pipe out of the output."""


@contextmanager
def serve(respond: Callable[[Seen], Reply]) -> Iterator[Server]:
    """A real HTTP server on a free loopback port, recording each request and answering with ``respond``."""
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen = Seen(self.command, self.path, self.headers, body)
            state.seen.append(seen)
            status, headers, payload = respond(seen)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """No access log on stderr."""

    server = _QuietServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def json_reply(status: int, value: Any) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


def wired_endpoint() -> tuple[Wire, AzureMLPlatform]:
    """A key-auth endpoint in the emulated workspace, reached through the real SDK."""
    wire = Wire.start()
    platform = wire.platform()
    platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "chat models"))
    wire.emulator.settle()
    wire.emulator.keys[ENDPOINT] = (KEY, KEY[::-1])
    return wire, platform


def platform_scoring_at(scoring_uri: str) -> AzureMLPlatform:
    wire, platform = wired_endpoint()
    wire.emulator.endpoints[ENDPOINT]["properties"]["scoringUri"] = scoring_uri
    return platform


# Scoring


def test_invoke_posts_json_with_the_key_and_the_deployment() -> None:
    def echo(seen: Seen) -> Reply:
        return json_reply(200, {"output": "hello", "received": json.loads(seen.body)})

    with serve(echo) as server:
        answer = platform_scoring_at(f"{server.url}/score").invoke(ENDPOINT, "blue-v3", {"input_data": [1]}, 5)

    assert answer == {"output": "hello", "received": {"input_data": [1]}}
    (request,) = server.seen
    assert (request.method, request.path) == ("POST", "/score")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["azureml-model-deployment"] == "blue-v3"
    assert request.headers["Content-Type"] == "application/json"


def test_an_error_answer_gives_status_and_excerpt_but_never_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def refuse(seen: Seen) -> Reply:
        return 401, {}, f"bad credentials: {seen.headers['Authorization']} {'x' * 1000}".encode()

    with serve(refuse) as server, pytest.raises(PlatformError) as caught:
        platform_scoring_at(f"{server.url}/score").invoke(ENDPOINT, "blue-v3", {}, 5)

    message = str(caught.value)
    assert message.startswith(f"scoring {ENDPOINT}/blue-v3 answered HTTP 401: bad credentials: Bearer ***")
    assert message.endswith("...")
    assert len(message) < 400
    assert KEY not in message
    assert KEY not in caplog.text


def test_a_slow_deployment_times_out() -> None:
    release = threading.Event()

    def stall(seen: Seen) -> Reply:
        release.wait(10)
        return json_reply(200, {})

    with serve(stall) as server:
        started = time.monotonic()
        with pytest.raises(PlatformError, match=r"timed out after 0\.5 s") as caught:
            platform_scoring_at(f"{server.url}/score").invoke(ENDPOINT, "blue-v3", {}, 0.5)
        release.set()
    assert time.monotonic() - started < 5
    assert KEY not in str(caught.value)


def test_a_503_is_retried_after_its_retry_after_and_then_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    answers = [(503, {"Retry-After": "1"}, b"warming up"), json_reply(200, {"output": "ready"})]

    with serve(lambda seen: answers.pop(0)) as server:
        started = time.monotonic()
        answer = platform_scoring_at(f"{server.url}/score").invoke(ENDPOINT, "blue-v3", {}, 5)

    assert answer == {"output": "ready"}
    assert len(server.seen) == 2 and time.monotonic() - started >= 1  # waited as told
    assert "REDACTED" in caplog.text and KEY not in caplog.text  # the pipeline's own request log


def test_a_deployment_that_keeps_failing_is_a_transient_error_after_bounded_retries() -> None:
    overloaded = (503, {"Retry-After": "0"}, b"overloaded")
    with serve(lambda seen: overloaded) as server, pytest.raises(TransientError, match="HTTP 503") as caught:
        platform_scoring_at(f"{server.url}/score").invoke(ENDPOINT, "blue-v3", {}, 5)
    assert len(server.seen) == 1 + RETRIES
    assert caught.value.retry_after_s == 0


def test_a_redirect_is_not_followed_with_the_key() -> None:
    with serve(lambda seen: json_reply(200, {"stolen": True})) as elsewhere:
        moved = (302, {"Location": f"{elsewhere.url}/collect"}, b"")
        with serve(lambda seen: moved) as server, pytest.raises(PlatformError, match="HTTP 302"):
            platform_scoring_at(f"{server.url}/score").invoke(ENDPOINT, "blue-v3", {}, 5)
    assert elsewhere.seen == []


def test_an_unreachable_or_non_json_deployment_is_a_platform_error() -> None:
    with serve(lambda seen: (200, {"Content-Type": "text/html"}, b"<html>gateway</html>")) as server:
        uri = f"{server.url}/score"
        with pytest.raises(PlatformError, match="something other than JSON: <html>gateway</html>"):
            platform_scoring_at(uri).invoke(ENDPOINT, "blue-v3", {}, 5)
    with pytest.raises(PlatformError, match=f"scoring {ENDPOINT}/blue-v3 failed") as caught:
        platform_scoring_at(uri).invoke(ENDPOINT, "blue-v3", {}, 5)  # the server is gone now
    assert KEY not in str(caught.value)


def test_invoking_an_endpoint_that_cannot_be_scored_says_why() -> None:
    wire, platform = wired_endpoint()
    with pytest.raises(NotFoundError):
        platform.invoke("nope", "blue", {}, 1)

    endpoint = wire.emulator.endpoints[ENDPOINT]["properties"]
    endpoint["scoringUri"] = None
    with pytest.raises(PlatformError, match=f"endpoint {ENDPOINT} has no scoring URI yet"):
        platform.invoke(ENDPOINT, "blue", {}, 1)

    endpoint["scoringUri"] = "https://ep.example/score"
    endpoint["authMode"] = "AMLToken"  # the SDK then asks for a token, not keys
    with pytest.raises(PlatformConfigError, match="does not use key authentication"):
        platform.invoke(ENDPOINT, "blue", {}, 1)


# MLflow metrics

WORKSPACE_PATH = (
    "/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"
)


def mlflow_run(run_id: str, parent: str | None, metrics: list[tuple[str, float, int, int]]) -> dict[str, Any]:
    tags = [{"key": "mlflow.parentRunId", "value": parent}] if parent else []
    return {
        "info": {"run_id": run_id, "experiment_id": "exp-1"},
        "data": {
            "metrics": [{"key": k, "value": v, "timestamp": ts, "step": step} for k, v, ts, step in metrics],
            "tags": tags,
        },
    }


# job -> pipeline node -> validation and finetune steps, as Azure ML nests a registry pipeline component.
RUNS = [
    mlflow_run("ftpilot-job", None, []),
    mlflow_run("node-1", "ftpilot-job", [("train_loss", 2.0, 150, 0)]),
    mlflow_run("step-validate", "node-1", []),
    mlflow_run("step-finetune", "node-1", [("train_loss", 0.9, 200, 30), ("eval_loss", 1.1, 190, 30)]),
]


class FakeTokenCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("token-abc", int(time.time()) + 3600)


def mlflow_server(seen: Seen) -> Reply:
    """The two MLflow REST calls the reader makes, over ``RUNS``, two results per search page."""
    url = urllib.parse.urlsplit(seen.path)
    if url.path == f"{WORKSPACE_PATH}/api/2.0/mlflow/runs/get":
        run_id = urllib.parse.parse_qs(url.query)["run_id"][0]
        for run in RUNS:
            if run["info"]["run_id"] == run_id:
                return json_reply(200, {"run": run})
        return json_reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
    if url.path == f"{WORKSPACE_PATH}/api/2.0/mlflow/runs/search" and seen.method == "POST":
        query = json.loads(seen.body)
        assert query["experiment_ids"] == ["exp-1"]
        parent = query["filter"].removeprefix("tags.mlflow.parentRunId = '").removesuffix("'")
        children = [run for run in RUNS if {"key": "mlflow.parentRunId", "value": parent} in run["data"]["tags"]]
        start = int(query.get("page_token", 0))
        page: dict[str, Any] = {"runs": children[start : start + 1]}
        if start + 1 < len(children):
            page["next_page_token"] = str(start + 1)
        return json_reply(200, page)
    return json_reply(404, {})


def test_metrics_are_the_latest_values_across_the_run_tree() -> None:
    credential = FakeTokenCredential()
    with serve(mlflow_server) as server:
        reader = MlflowRestMetricsReader(f"{server.url}{WORKSPACE_PATH}", credential)
        metrics = reader.final_metrics("ftpilot-job")

    assert metrics == {"train_loss": 0.9, "eval_loss": 1.1}
    assert credential.scopes == [("https://management.azure.com/.default",)]
    assert {request.headers["Authorization"] for request in server.seen} == {"Bearer token-abc"}
    searches = [json.loads(request.body) for request in server.seen if request.method == "POST"]
    assert [search["filter"] for search in searches] == [
        "tags.mlflow.parentRunId = 'ftpilot-job'",
        "tags.mlflow.parentRunId = 'node-1'",
        "tags.mlflow.parentRunId = 'node-1'",  # second page
        "tags.mlflow.parentRunId = 'step-validate'",
        "tags.mlflow.parentRunId = 'step-finetune'",
    ]


def test_metrics_of_an_unknown_run_are_not_found() -> None:
    with serve(mlflow_server) as server, pytest.raises(NotFoundError, match="no MLflow run nope"):
        MlflowRestMetricsReader(f"{server.url}{WORKSPACE_PATH}", FakeTokenCredential()).final_metrics("nope")


def test_the_azureml_tracking_uri_becomes_its_https_api() -> None:
    assert api_base(f"azureml://westeurope.api.azureml.ms{WORKSPACE_PATH}") == (
        f"https://westeurope.api.azureml.ms{WORKSPACE_PATH}/api/2.0/mlflow"
    )
