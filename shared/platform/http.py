"""JSON over HTTPS with the standard library, for the two calls the Azure SDKs do not make for us.

Scoring a deployment and reading MLflow metrics are plain JSON requests. ``urllib.request`` does
them without adding a runtime dependency (``httpx`` is a dev-only package here), and it lets us
refuse redirects: urllib would otherwise resend every header, ``Authorization`` included, to
wherever a 3xx points, which would hand an endpoint key or a bearer token to another host.

Errors become ``PlatformError`` carrying the status and a short excerpt of the body, with every
secret the caller names scrubbed from it, so the message is safe to log and to show an operator.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from shared.platform.port import PlatformError, TransientError

_EXCERPT_CHARS = 300


class HttpStatusError(PlatformError):
    """The server answered with a non-2xx status (kept as ``status`` for callers that branch on it)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TransientHttpStatusError(HttpStatusError, TransientError):
    """A 429 or 5xx: the server may answer later (``retry_after_s`` from its ``Retry-After``)."""

    def __init__(self, message: str, status: int, retry_after_s: float | None) -> None:
        HttpStatusError.__init__(self, message, status)
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; None when absent or not a number (HTTP dates are not used by Azure)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every 3xx into an error instead of following it with our credentials attached."""

    def redirect_request(self, *_request_and_response: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def request_json(
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    secrets: Iterable[str] = (),
) -> Any:
    """Send ``body`` as JSON and return the decoded JSON answer (None for an empty body).

    ``what`` names the call in error messages ("scoring ep/blue"); ``secrets`` are removed from any
    text that ends up in one. ``timeout_s`` bounds each socket operation, as urllib defines it.
    """
    secrets = [secret for secret in secrets if secret]
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        message = f"{what} answered HTTP {exc.code}: {_excerpt(exc.read(), secrets)}"
        if exc.code == 429 or exc.code >= 500:
            wait = retry_after_seconds(exc.headers.get("Retry-After"))
            raise TransientHttpStatusError(message, exc.code, wait) from None
        raise HttpStatusError(message, exc.code) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise TransientError(f"{what} timed out after {timeout_s:g} s") from None
        raise TransientError(f"{what} failed: {_scrub(str(reason), secrets)}") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise PlatformError(f"{what} answered with something other than JSON: {_excerpt(raw, secrets)}") from None


def _excerpt(raw: bytes, secrets: Iterable[str]) -> str:
    """The start of a response body on one line, secrets removed."""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    text = _scrub(text, secrets)
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
