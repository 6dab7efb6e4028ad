"""Managed online endpoints and deployments: begun here, observed through their provisioning state.

Creating a deployment takes many minutes, longer than a function should run. So every change is
started with ``begin_*`` and its poller is dropped unread: the SDK keeps polling on a daemon thread,
and the rollout worker reads the outcome later through ``get_endpoint``/``get_deployment``.

Creates look first and leave a resource that exists alone (a trigger delivered twice must not
redeploy); one whose provisioning failed is begun again, which is how a retry looks. Deletes of
something already gone succeed: the outcome asked for is there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError, HttpResponseError

from shared.platform.azureml.service import MANAGED_BY, get_or_none, is_conflict, text_of
from shared.platform.port import (
    ConflictError,
    DeploymentInfo,
    DeploymentRequest,
    EndpointInfo,
    EndpointRequest,
    NotFoundError,
    ProvisioningState,
)

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import OnlineDeployment, OnlineEndpoint

log = logging.getLogger(__name__)

# The walkthrough's deployment settings: a 7B model needs minutes to load before it answers probes,
# and a chat completion can take longer than the default one-minute request timeout.
LIVENESS_INITIAL_DELAY_S = 600
REQUEST_TIMEOUT_MS = 90_000
LOG_LINES_ON_FAILURE = 20
_ARM_MODEL = re.compile(r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.IGNORECASE)
_SHORT_MODEL = re.compile(r"azureml:(?P<name>[^:/]+):(?P<version>[^:/]+)")

_STATES = {
    "creating": ProvisioningState.CREATING,
    "updating": ProvisioningState.UPDATING,
    "scaling": ProvisioningState.UPDATING,
    "deleting": ProvisioningState.DELETING,
    "succeeded": ProvisioningState.SUCCEEDED,
    "failed": ProvisioningState.FAILED,
    "canceled": ProvisioningState.CANCELED,
}


def provisioning_state(state: object) -> ProvisioningState:
    """Azure's provisioning state as the port's; an unknown one reads as in progress (not terminal)."""
    text = text_of(state)
    return _STATES.get((text or "").lower(), ProvisioningState.UPDATING if text else ProvisioningState.CREATING)


# Endpoints


def get_endpoint(ml_client: MLClient, name: str) -> EndpointInfo | None:
    endpoint = get_or_none(ml_client.online_endpoints.get, name)
    return None if endpoint is None else endpoint_info(endpoint)


def list_endpoints(ml_client: MLClient) -> list[EndpointInfo]:
    return [endpoint_info(endpoint) for endpoint in ml_client.online_endpoints.list()]


def begin_create_endpoint(ml_client: MLClient, request: EndpointRequest) -> None:
    """Start creating a key-authenticated managed endpoint, unless it exists and has not failed."""
    existing = get_or_none(ml_client.online_endpoints.get, request.name)
    if existing is not None and _leave_alone(existing.provisioning_state, f"endpoint {request.name}"):
        return
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    endpoint = ManagedOnlineEndpoint(
        name=request.name,
        description=request.description,
        auth_mode="key",
        tags={**request.tags, **MANAGED_BY},
    )
    ml_client.online_endpoints.begin_create_or_update(endpoint)


def begin_set_traffic(ml_client: MLClient, endpoint_name: str, traffic: Mapping[str, int]) -> None:
    """Start moving the endpoint's traffic to ``traffic`` (deployment -> percent)."""
    endpoint = _require_endpoint(ml_client, endpoint_name)
    # The SDK's get lists the endpoint's deployments into ``traffic`` (0 for those without), so
    # names it lacks are deployments that do not exist: refused here, as the port says.
    unknown = sorted(set(traffic) - set(endpoint.traffic or {}))
    if unknown:
        raise NotFoundError(f"endpoint {endpoint_name} has no deployment {', '.join(unknown)}")
    endpoint.traffic = dict(traffic)
    ml_client.online_endpoints.begin_create_or_update(endpoint)


def begin_delete_endpoint(ml_client: MLClient, name: str) -> None:
    """Start deleting the endpoint and its deployments; nothing to do if it is gone or already going.

    A caller asks again when it lost the answer to its first delete (see ``_delete_once``).
    """
    _delete_once(
        lambda: ml_client.online_endpoints.begin_delete(name=name), lambda: ml_client.online_endpoints.get(name)
    )


def endpoint_info(endpoint: OnlineEndpoint) -> EndpointInfo:
    return EndpointInfo(
        name=endpoint.name,
        state=provisioning_state(endpoint.provisioning_state),
        scoring_uri=endpoint.scoring_uri,
        traffic=dict(endpoint.traffic or {}),
        tags=dict(endpoint.tags or {}),
        created_at=(endpoint.properties or {}).get("createdAt"),
    )


# Deployments


def get_deployment(ml_client: MLClient, endpoint_name: str, name: str) -> DeploymentInfo | None:
    deployment = get_or_none(ml_client.online_deployments.get, name=name, endpoint_name=endpoint_name)
    return None if deployment is None else deployment_info(ml_client, deployment)


def list_deployments(ml_client: MLClient, endpoint_name: str) -> list[DeploymentInfo]:
    """The endpoint's deployments; none when the endpoint itself is gone."""
    deployments = get_or_none(lambda: list(ml_client.online_deployments.list(endpoint_name=endpoint_name)))
    return [deployment_info(ml_client, deployment) for deployment in deployments or []]


def begin_create_deployment(ml_client: MLClient, request: DeploymentRequest) -> None:
    """Start deploying ``request.model_id``, unless the deployment exists and has not failed.

    An existing deployment of another model is a conflict: swapping a live deployment's model in
    place would bypass the traffic shift that is the point of a rollout.
    """
    existing = get_or_none(ml_client.online_deployments.get, name=request.name, endpoint_name=request.endpoint_name)
    where = f"deployment {request.endpoint_name}/{request.name}"
    if existing is not None:
        current = _model_id(existing)
        if current and not same_model(current, request.model_id):
            raise ConflictError(f"{where} already serves model {current}, not {request.model_id}")
        if _leave_alone(existing.provisioning_state, where):
            return
    from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

    deployment = ManagedOnlineDeployment(
        name=request.name,
        endpoint_name=request.endpoint_name,
        model=request.model_id,
        instance_type=request.instance_type,
        instance_count=request.instance_count,
        liveness_probe=ProbeSettings(initial_delay=LIVENESS_INITIAL_DELAY_S),
        request_settings=OnlineRequestSettings(request_timeout_ms=REQUEST_TIMEOUT_MS),
        tags={**request.tags, **MANAGED_BY},
    )
    ml_client.online_deployments.begin_create_or_update(deployment)


def begin_delete_deployment(ml_client: MLClient, endpoint_name: str, name: str) -> None:
    """Start deleting the deployment; nothing to do if it (or its endpoint) is gone or already going.

    A deployment that still takes traffic is refused here, with the port's ConflictError, rather
    than by the service's 400 (a user error, whose wording no recording shows).
    """
    endpoint = get_or_none(ml_client.online_endpoints.get, endpoint_name)
    if endpoint is None:
        return
    if (endpoint.traffic or {}).get(name):
        raise ConflictError(
            f"deployment {endpoint_name}/{name} still takes {endpoint.traffic[name]}% of the traffic; move it first"
        )
    _delete_once(
        lambda: ml_client.online_deployments.begin_delete(name=name, endpoint_name=endpoint_name),
        lambda: ml_client.online_deployments.get(name=name, endpoint_name=endpoint_name),
    )


def deployment_info(ml_client: MLClient, deployment: OnlineDeployment) -> DeploymentInfo:
    state = provisioning_state(deployment.provisioning_state)
    error = None
    if state is ProvisioningState.FAILED:
        error = _failure(ml_client, deployment)
    return DeploymentInfo(
        endpoint_name=deployment.endpoint_name,
        name=deployment.name,
        state=state,
        model_id=_model_id(deployment),
        error=error,
        created_at=_created_at(deployment),
    )


def _created_at(deployment: OnlineDeployment) -> str | None:
    """When the service created it, from its ``systemData`` (the SDK's ``creation_context``)."""
    created = getattr(deployment.creation_context, "created_at", None)
    return created.isoformat() if isinstance(created, datetime) else (str(created) if created else None)


# Helpers


def _require_endpoint(ml_client: MLClient, name: str) -> OnlineEndpoint:
    endpoint = get_or_none(ml_client.online_endpoints.get, name)
    if endpoint is None:
        raise NotFoundError(f"endpoint {name} does not exist")
    return endpoint


def _delete_once(begin_delete: Callable[[], object], get: Callable[[], Any]) -> None:
    """Start a delete; nothing to do if the resource is gone or already being deleted.

    A second DELETE while the first runs is refused as an operation in progress (409): only
    then is the resource read, so the usual delete costs no read of the throttled ARM budget.
    """
    try:
        get_or_none(begin_delete)
    except HttpResponseError as error:
        if not is_conflict(error):
            raise
        current = get_or_none(get)
        if current is not None and provisioning_state(current.provisioning_state) is not ProvisioningState.DELETING:
            raise


def _leave_alone(state: str | None, what: str) -> bool:
    """Whether an existing resource in ``state`` is left alone (True) or begun again after a failure."""
    current = provisioning_state(state)
    if current is ProvisioningState.DELETING:
        raise ConflictError(f"{what} is being deleted; create it again once it is gone")
    if current in (ProvisioningState.FAILED, ProvisioningState.CANCELED):
        log.info("%s is %s; beginning it again", what, current)
        return False
    return True


def same_model(one: str, other: str) -> bool:
    """Whether two model references name the same model version, whichever form each is written in.

    The service answers with ARM ids (``.../models/<name>/versions/<version>``) while a request may
    hold ``azureml:<name>:<version>``; references neither form parses are compared as written.
    """
    refs = [_name_and_version(reference) for reference in (one, other)]
    if None in refs:
        return one.lower() == other.lower()
    return refs[0] == refs[1]


def _name_and_version(reference: str) -> tuple[str, str] | None:
    match = _ARM_MODEL.search(reference) or _SHORT_MODEL.fullmatch(reference)
    return None if match is None else (match["name"].lower(), match["version"])


def _model_id(deployment: OnlineDeployment) -> str | None:
    """The deployment's model as the service reports it: an id string."""
    return deployment.model if isinstance(deployment.model, str) else None


def _failure(ml_client: MLClient, deployment: OnlineDeployment) -> str:
    """What a failed deployment shows: its state and, where the container got that far, its last log lines."""
    message = f"deployment {deployment.endpoint_name}/{deployment.name} provisioning failed"
    try:
        logs = ml_client.online_deployments.get_logs(
            name=deployment.name, endpoint_name=deployment.endpoint_name, lines=LOG_LINES_ON_FAILURE
        )
    except AzureError as exc:  # the logs only decorate the message; the state is the answer
        log.info("no logs for failed deployment %s: %s", deployment.name, exc)
        return message
    tail = (logs or "").strip()
    return f"{message}; last log lines:\n{tail}" if tail else message
