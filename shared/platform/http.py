"""JSON over HTTPS through an azure-core pipeline, for the two calls the Azure SDKs do not make for us.

Scoring a deployment and reading MLflow metrics are plain JSON requests. They go through the
same machinery the Azure SDKs use (``azure.core.PipelineClient`` over ``requests``):

- its retry policy retries connection failures, timeouts, 429 and 5xx (for a POST, 500, 503
  and 504 only) a bounded number of times with exponential backoff and jitter, honouring
  ``Retry-After``;
- redirects are not followed at all: nothing this module sends, a key or a bearer token in
  ``Authorization`` above all, can be carried to another host by a 3xx (azure-core's own
  redirect policy would drop ``Authorization`` on the way; not going is stricter still);
- its HTTP logging policy writes ``Authorization`` and every other header not on its allow
  list as ``REDACTED``.

Errors become ``PlatformError`` carrying the status and a short excerpt of the body, with every
secret the caller names scrubbed from it, so the message is safe to log and to show an operator;
what may succeed later is a ``TransientError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared.platform.port import PlatformError, TransientError

if TYPE_CHECKING:
    from azure.core import PipelineClient

_EXCERPT_CHARS = 300
RETRIES = 2  # after the first try: a smoke test or a metrics read waits seconds, not minutes
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0


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


@lru_cache(maxsize=1)
def _client() -> PipelineClient:
    """One pipeline (and one connection pool) per process."""
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import (
        HeadersPolicy,
        HttpLoggingPolicy,
        RedirectPolicy,
        RetryPolicy,
        UserAgentPolicy,
    )
    from azure.core.pipeline.transport import RequestsTransport

    policies = [
        HeadersPolicy(),
        UserAgentPolicy(sdk_moniker="ftpilot"),
        RetryPolicy(retry_total=RETRIES, retry_backoff_factor=BACKOFF_S, retry_backoff_max=BACKOFF_MAX_S),
        RedirectPolicy(permit_redirects=False),
        HttpLoggingPolicy(),
    ]
    return PipelineClient(base_url="", policies=policies, transport=RequestsTransport())


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
    text that ends up in one. ``timeout_s`` bounds connecting and each read of every try.
    """
    from azure.core.exceptions import AzureError, ServiceRequestTimeoutError, ServiceResponseTimeoutError
    from azure.core.rest import HttpRequest

    secrets = [secret for secret in secrets if secret]
    request = HttpRequest(
        method,
        url,
        headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})},
        content=None if body is None else json.dumps(body).encode("utf-8"),
    )
    try:
        response = _client().send_request(request, connection_timeout=timeout_s, read_timeout=timeout_s)
        raw = response.read()
    except (ServiceRequestTimeoutError, ServiceResponseTimeoutError):
        raise TransientError(f"{what} timed out after {timeout_s:g} s") from None
    except AzureError as exc:  # no connection, a reset, or the retries ran out
        raise TransientError(f"{what} failed: {_scrub(_first_line(exc), secrets)}") from None
    status = response.status_code
    if status >= 300:
        message = f"{what} answered HTTP {status}: {_excerpt(raw, secrets)}"
        if status == 429 or status >= 500:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise TransientHttpStatusError(message, status, wait)
        raise HttpStatusError(message, status)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise PlatformError(f"{what} answered with something other than JSON: {_excerpt(raw, secrets)}") from None


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _excerpt(raw: bytes, secrets: Iterable[str]) -> str:
    """The start of a response body on one line, secrets removed."""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    text = _scrub(text, secrets)
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def scorer(scoring_uri: str, key: str, endpoint_name: str) -> Callable[[str, Mapping[str, Any], float], Any]:
    """Calls of an endpoint's scoring URI with its key, each pinned to a deployment by the header
    ``azureml-model-deployment`` (how a rollout reaches a deployment that has no traffic yet)."""

    def score(deployment_name: str, payload: Mapping[str, Any], timeout_s: float) -> Any:
        return request_json(
            "POST",
            scoring_uri,
            what=f"scoring {endpoint_name}/{deployment_name}",
            timeout_s=timeout_s,
            headers={"Authorization": f"Bearer {key}", "azureml-model-deployment": deployment_name},
            body=dict(payload),
            secrets=(key,),
        )

    return score
