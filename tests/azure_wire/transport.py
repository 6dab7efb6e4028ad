"""How the real Azure SDK clients reach the emulator: through their own transport, unmodified.

``RequestsTransport`` is the transport every Azure client here uses by default. It is handed a
``requests.Session`` whose adapter answers from the emulator instead of opening a socket, so the
SDK's whole pipeline still runs: its request builders, authentication, retry and redirect policies,
long-running-operation pollers, response deserialisers and error mapping. A connection reset is
raised the way ``requests`` raises it, so azure-core turns it into its own error as it would in
Azure. Nothing leaves the process.

Every request is counted: ARM (``management.azure.com``) reads, writes and deletes that ftpilot's
own code makes, apart from what the SDK's LRO pollers send from their daemon threads (status polls
and final reads, which depend on timing); registry calls go to another host and are not throttled
by ARM.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError

if TYPE_CHECKING:
    from tests.azure_wire.emulator import WorkspaceEmulator

ARM_HOST = "management.azure.com"
POLL_MARKERS = ("/mfeOperationsStatus/", "/mfeOperationResults/")


class ConnectionReset(Exception):
    """What a handler raises to have the connection dropped before any answer."""


@dataclass(frozen=True)
class Sent:
    """One request as the SDK sent it."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any
    thread: str = ""  # the sending thread's name: azure-core names its pollers' threads "LROPoller(...)"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def is_poll(self) -> bool:
        """Sent by an SDK poller (on its own thread, or an operation-status read)."""
        return self.thread.startswith("LROPoller") or any(marker in self.path for marker in POLL_MARKERS)

    @property
    def arm_kind(self) -> str | None:
        """``read``, ``write`` or ``delete`` for an ARM call ftpilot made; None for polls and other hosts."""
        if self.host != ARM_HOST or self.is_poll:
            return None
        return {"GET": "read", "HEAD": "read", "DELETE": "delete"}.get(self.method, "write")


@dataclass(frozen=True)
class Answered:
    """One answer as the emulator gave it."""

    request: Sent
    status: int
    headers: dict[str, str]
    body: Any


class _EmulatorAdapter(HTTPAdapter):
    def __init__(
        self, emulator: WorkspaceEmulator, log: list[Sent], answers: list[Answered], lock: threading.Lock
    ) -> None:
        super().__init__()
        self._emulator = emulator
        self._log = log
        self._answers = answers
        self._lock = lock

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        raw = request.body or b""
        if isinstance(raw, str):
            raw = raw.encode()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        sent = Sent(
            request.method or "GET", request.url or "", dict(request.headers), body, threading.current_thread().name
        )
        with self._lock:
            self._log.append(sent)
        try:
            status, headers, payload = self._emulator.handle(sent)
        except ConnectionReset as reset:
            raise requests.exceptions.ConnectionError(ProtocolError("Connection aborted.", reset)) from None
        with self._lock:
            self._answers.append(Answered(sent, status, dict(headers), payload))
        data = b"" if payload is None else json.dumps(payload).encode()
        headers = {"Content-Length": str(len(data)), **headers}
        if payload is not None:
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        response = urllib3.HTTPResponse(
            body=io.BytesIO(data), headers=headers, status=status, preload_content=False, decode_content=False
        )
        return self.build_response(request, response)


class WireRecorder:
    """The transport for every client of one test, and the log of what went over it."""

    def __init__(self, emulator: WorkspaceEmulator) -> None:
        self.sent: list[Sent] = []
        self.answers: list[Answered] = []
        self._lock = threading.Lock()
        session = requests.Session()
        adapter = _EmulatorAdapter(emulator, self.sent, self.answers, self._lock)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self.session = session

    def transport(self) -> Any:
        from azure.core.pipeline.transport import RequestsTransport

        return RequestsTransport(session=self.session, session_owner=False)

    def calls(self) -> list[Sent]:
        with self._lock:
            return list(self.sent)

    def arm_counts(self) -> Counter[str]:
        """ARM reads, writes and deletes ftpilot made (LRO status polls left out)."""
        return Counter(kind for sent in self.calls() if (kind := sent.arm_kind))

    def polls(self) -> int:
        return sum(1 for sent in self.calls() if sent.is_poll)

    def mark(self) -> int:
        """A position in the log, to count what happens after it."""
        with self._lock:
            return len(self.sent)

    def since(self, mark: int) -> list[Sent]:
        with self._lock:
            return list(self.sent[mark:])


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class JwtCredential:
    """Issues unsigned JWT-shaped tokens whose ``aud`` is the resource asked for, as Entra ID does.

    azure-ai-ml decodes the token it gets for ``https://ml.azure.com/.default`` and checks its
    audience, so an opaque string would not do; the emulator checks each request's token in turn.
    """

    def __init__(self, object_id: str = "11111111-2222-3333-4444-555555555555") -> None:
        self.object_id = object_id
        self.scopes: list[str] = []

    def token_for(self, scope: str) -> str:
        audience = scope.removesuffix("/.default").removesuffix("/")
        claims = {"aud": audience, "exp": int(time.time()) + 3600, "oid": self.object_id, "tid": "tenant"}
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.extend(scopes)
        return AccessToken(self.token_for(scopes[0]), int(time.time()) + 3600)


def audience_of(authorization: str) -> str | None:
    """The ``aud`` claim of a ``Bearer`` JWT, or None when the header holds no such token."""
    token = authorization.removeprefix("Bearer ").strip()
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims.get("aud") if isinstance(claims, dict) else None
