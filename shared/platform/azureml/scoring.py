"""Calling one deployment of an endpoint directly, with the endpoint's key fetched for that call.

The key is read from the service for each call, or once for a batch of calls (``open_scoring``,
the promotion gate's), rather than kept: keys can be regenerated, and a key that is never stored
cannot end up in a run record, a log line or an error message. The
``azureml-model-deployment`` header pins the call to one deployment whatever the traffic split,
which is how a rollout smoke-tests a new deployment before it gets any traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.platform.azureml.service import get_or_none
from shared.platform.http import scorer
from shared.platform.port import NotFoundError, PlatformConfigError, PlatformError, Scorer

if TYPE_CHECKING:
    from azure.ai.ml import MLClient


def invoke(
    ml_client: MLClient, endpoint_name: str, deployment_name: str, payload: Mapping[str, Any], timeout_s: float
) -> Any:
    """POST ``payload`` to the deployment's scoring URI and return the decoded JSON answer."""
    return open_scoring(ml_client, endpoint_name)(deployment_name, payload, timeout_s)


def open_scoring(ml_client: MLClient, endpoint_name: str) -> Scorer:
    """The endpoint's scoring URI and key, read once, behind a caller of its deployments."""
    endpoint = get_or_none(ml_client.online_endpoints.get, endpoint_name)
    if endpoint is None:
        raise NotFoundError(f"endpoint {endpoint_name} does not exist")
    if not endpoint.scoring_uri:
        raise PlatformError(
            f"endpoint {endpoint_name} has no scoring URI yet (provisioning state {endpoint.provisioning_state})"
        )
    key = getattr(ml_client.online_endpoints.get_keys(endpoint_name), "primary_key", None)
    if not key:
        raise PlatformConfigError(
            f"endpoint {endpoint_name} does not use key authentication, as ftpilot's endpoints do"
        )
    return scorer(endpoint.scoring_uri, key, endpoint_name)
