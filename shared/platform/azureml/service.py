"""How the Azure ML service answers, read in one place: absent, taken, refused, or try again.

The SDKs raise azure-core's exceptions (``ResourceNotFoundError`` for some 404s, a plain
``HttpResponseError`` for others, ``ServiceRequestError`` for a dropped connection) and azure-ai-ml's
own (``ValidationException`` when ``label="latest"`` finds no version). ``translate`` turns each into
the port's kind, so no SDK type reaches the domain; ``get_or_none`` is the one reading of "absent".
By the time an error gets here the SDK's own retry policy has already retried 429s, 5xx and
connection errors (honouring ``Retry-After``), so a ``TransientError`` means its budget ran out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.naming import MANAGED_TAG, MANAGED_VALUE
from shared.platform.http import retry_after_seconds
from shared.platform.port import (
    ConflictError,
    NotFoundError,
    PlatformConfigError,
    PlatformError,
    TransientError,
)

T = TypeVar("T")

# Tag on everything ftpilot creates, so its resources are recognisable in a shared workspace.
MANAGED_BY = {MANAGED_TAG: MANAGED_VALUE}
_USER_ERROR_STATUSES = frozenset({400, 401, 403, 405, 413, 422})
_MESSAGE_CHARS = 500
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def status_of(error: BaseException) -> int | None:
    return getattr(error, "status_code", None) if isinstance(error, HttpResponseError) else None


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ResourceNotFoundError) or status_of(error) == 404


def is_conflict(error: BaseException) -> bool:
    """Whether the service refused a change because the name is taken or busy (HTTP 409)."""
    return isinstance(error, ResourceExistsError) or status_of(error) == 409


def get_or_none(get: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``get(*args, **kwargs)``, or None when the service says the resource does not exist."""
    try:
        return get(*args, **kwargs)
    except HttpResponseError as error:
        if is_not_found(error):
            return None
        raise


def text_of(value: object) -> str | None:
    """An entity field as the service's string: the SDK holds some as str, some as str-valued enums."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def is_user_error(error: BaseException | None) -> bool:
    """azure-ai-ml's own exceptions carry a category; a user error is one a setting must fix.

    The SDK sometimes wraps a user-error ``ValidationException`` in an ``MlException`` of unknown
    category, so the cause counts too.
    """
    if error is None:
        return False
    category = getattr(error, "error_category", None)
    if str(getattr(category, "value", category) or "").lower() == "usererror":
        return True
    return is_user_error(error.__cause__ or error.__context__)


def service_message(error: BaseException) -> str:
    """What the service said, on one line: its message and error code, without the SDK's banner."""
    odata = getattr(error, "error", None)
    message = getattr(odata, "message", None)
    code = getattr(odata, "code", None)
    inner = [getattr(detail, "code", None) for detail in getattr(odata, "details", None) or []]
    if message:
        codes = ", ".join(c for c in (code, *inner) if c)
        text = f"{message} ({codes})" if codes else message
    else:
        text = _first_meaningful_line(str(getattr(error, "message", None) or error))
    status = status_of(error)
    if status:
        text = f"HTTP {status}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."


def _first_meaningful_line(text: str) -> str:
    """azure-ai-ml formats its validation errors as a coloured banner; keep the line that says what is wrong."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    reasons = [line.removeprefix("(x)").strip() for line in lines if line.startswith("(x)")]
    return "; ".join(reasons) if reasons else (lines[0] if lines else type(text).__name__)


def retry_after_s(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    return retry_after_seconds(response.headers.get("Retry-After")) if response is not None else None


def translate(error: BaseException, what: str) -> PlatformError | None:
    """The port's error for an SDK error raised while doing ``what``; None for an error that is no SDK's."""
    if isinstance(error, PlatformError):
        return error
    from_sdk = isinstance(error, AzureError) or type(error).__module__.startswith("azure.ai.ml")
    if not from_sdk:
        return None
    message = f"{what}: {service_message(error)}"
    status = status_of(error)
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        return PlatformConfigError(
            f"{message}; check the identity ftpilot runs as and its role assignments on the workspace"
        )
    if is_not_found(error):
        return NotFoundError(message)
    if is_conflict(error):
        return ConflictError(message)
    if status == 429 or (status or 0) >= 500 or isinstance(error, ServiceRequestError | ServiceResponseError):
        return TransientError(message, retry_after_s(error))
    if status in _USER_ERROR_STATUSES or (status is None and is_user_error(error)):
        return PlatformConfigError(message)
    return PlatformError(message)
