"""How the Azure ML service answers, in one place: what "not there" and "already there" look like.

Every create in the adapter looks before it creates and treats a name collision during the create
as a lost race; these helpers keep that reading of the service's errors identical everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

T = TypeVar("T")

# Tag on everything ftpilot creates, so its resources are recognisable in a shared workspace.
MANAGED_BY = {"managed-by": "ftpilot"}


def get_or_none(get: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``get(*args, **kwargs)``, or None when the service says the resource does not exist."""
    try:
        return get(*args, **kwargs)
    except ResourceNotFoundError:
        return None


def is_conflict(exc: HttpResponseError) -> bool:
    """Whether the service refused a create because the name is taken (HTTP 409)."""
    return isinstance(exc, ResourceExistsError) or exc.status_code == 409
