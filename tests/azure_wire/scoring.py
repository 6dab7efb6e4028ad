"""The emulated workspace's data plane on loopback: scoring URIs and the MLflow tracking API.

Scoring and MLflow metrics are plain HTTPS calls that ftpilot makes itself (``shared.platform.http``),
not through an Azure SDK transport, so they get a real socket: a threaded HTTP server on 127.0.0.1.
Each endpoint's scoring URI is ``http://127.0.0.1:<port>/<endpoint>/score`` (in Azure it is
``https://<endpoint>.<region>.inference.ml.azure.com/score``); the emulator checks the key from
``listKeys`` and the ``azureml-model-deployment`` header there, and counts requests for Azure Monitor.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.azure_wire.emulator import WorkspaceEmulator


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: WorkspaceEmulator

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that hung up is not news
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        emulator = self.server.emulator
        if "/api/2.0/mlflow/" in url.path:
            self._answer(*emulator.mlflow(url.path.split("/api/2.0/mlflow/", 1)[1], body, query))
            return
        parts = url.path.strip("/").split("/")
        if len(parts) == 2 and parts[1] == "score":
            headers = {key.lower(): value for key, value in self.headers.items()}
            self._answer(*emulator.score(parts[0], headers, body))
            return
        self._answer(404, {"message": f"no route for {url.path}"})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if "/api/2.0/mlflow/" in url.path:
            self._answer(*self.server.emulator.mlflow(url.path.split("/api/2.0/mlflow/", 1)[1], None, query))
            return
        self._answer(404, {"message": f"no route for {url.path}"})


class DataPlane:
    """The loopback server; start it before the emulator hands out scoring URIs."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def serve(self, emulator: WorkspaceEmulator) -> None:
        self._server.emulator = emulator
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
