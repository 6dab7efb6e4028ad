"""An Azure ML workspace (and the ``azureml`` registry, and Azure Monitor) at the HTTP layer, with state.

The real azure-ai-ml and azure-mgmt-monitor clients send their real requests here (see
``transport.py``). Answers are shaped as the service's: status codes, ``Azure-AsyncOperation`` and
``Location`` headers, ``mfeOperationsStatus`` polling bodies, provisioning states, ``systemData``,
``nextLink`` paging, and error bodies ``{"error": {"code", "message", "details", "additionalInfo"}}``
with ``x-ms-response-type: error``. Where they come from:

* RECORDED: ``../shared/fixtures/azureml/rest/recordings`` (azure-ai-ml 1.32 against a live
  workspace): endpoint PUT 201 + async headers, DELETE 202 with body ``"null"``, polling bodies,
  model versions as integer strings created by PUT 201 with ``provisioningState: Succeeded``, the
  "latest" look-up by ``$orderBy=createdtime desc&$top=1`` with ``nextLink``, the 404 ``ModelNotFound``
  body, a second job PUT to an existing name answering 200, token POST.
* SPEC: the REST spec's examples in ``../shared/fixtures/azureml/rest/specs`` (deployment bodies with
  ``scaleSettings``, compute, vmSizes, listKeys, getLogs, cancel, deletes answering 204).
* ASSUMED (marked ``# ASSUMED`` below): what no fixture shows, written in on purpose and as strict as
  the service is known to be: a model version that is not a positive integer is refused (400), a PUT
  that would change an existing model version's content is a conflict (409), a change to an endpoint
  or deployment while another is under way is a conflict (409), traffic must name existing
  deployments and add up to 100 or 0, a deployment still taking traffic cannot be deleted (400),
  missing jobs/endpoints/deployments answer 404 in the recorded error shape.

``tests/test_azure_wire.py`` keeps this honest: route by route, the keys and value types of these
answers must cover the recorded or spec ones.

Long-running operations advance on ``tick()``, not on reads: the SDK polls on its own daemon
threads, so counting reads would make a test's outcome depend on thread timing.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.azure_wire.transport import ConnectionReset, Sent, audience_of

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-ftpilot"
WORKSPACE = "ws-ftpilot"
LOCATION = "westeurope"
WORKSPACE_GUID = "23329d4e-9b5f-403d-a218-c4e4f8323f5a"
REGISTRY = "azureml"
REGISTRY_SUBSCRIPTION = "11111111-0000-0000-0000-000000000000"
REGISTRY_RESOURCE_GROUP = "registry-builtin-prod-eastus-01"
REGISTRY_MFE = "https://eastus.api.azureml.ms/"
ARM = "https://management.azure.com"
PROVIDER = "/providers/Microsoft.MachineLearningServices"
WORKSPACE_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}{PROVIDER}/workspaces/{WORKSPACE}"
OPERATIONS = f"/subscriptions/{SUBSCRIPTION}{PROVIDER}/locations/{LOCATION}"
ML_AUDIENCE = "https://ml.azure.com"
ARM_AUDIENCES = {"https://management.azure.com", "https://management.core.windows.net"}

BASE_MODEL = "Phi-3-mini-4k-instruct"
BASE_MODEL_VERSION = "15"
CLUSTER = "gpu-cluster-big"
CLUSTER_SIZE = "Standard_NC24ads_A100_v4"
JOB_STATUSES = (
    "NotStarted",
    "Starting",
    "Provisioning",
    "Preparing",
    "Queued",
    "Running",
    "Finalizing",
    "CancelRequested",
    "Completed",
    "Failed",
    "Canceled",
    "NotResponding",
    "Paused",
    "Unknown",
)
_POSITIVE_INTEGER = re.compile(r"[1-9][0-9]*")


def _stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat(timespec="microseconds")


def _system_data(created: str | None = None) -> dict[str, str]:
    now = _stamp()
    return {
        "createdAt": created or now,
        "createdBy": "ftpilot-identity",
        "createdByType": "Application",
        "lastModifiedAt": now,
        "lastModifiedBy": "ftpilot-identity",
        "lastModifiedByType": "Application",
    }


# SPEC (ManagedOnlineDeployment/get.json): what the service fills in on a deployment that a PUT leaves out.
_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "description": None,
    "properties": {},
    "scaleSettings": {"scaleType": "Default"},
    "requestSettings": {"maxQueueWait": "PT0.5S", "requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1},
    "appInsightsEnabled": False,
    "livenessProbe": {
        "failureThreshold": 30,
        "successThreshold": 1,
        "timeout": "PT2S",
        "period": "PT10S",
        "initialDelay": "PT10S",
    },
    "readinessProbe": {
        "failureThreshold": 30,
        "successThreshold": 1,
        "timeout": "PT2S",
        "period": "PT10S",
        "initialDelay": "PT10S",
    },
    "endpointComputeType": "Managed",
    "modelMountPath": None,
    "instanceType": None,
    "model": None,
}


def _with_defaults(sent: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``sent`` with every key of ``defaults`` it leaves out filled in, nested objects too."""
    merged = copy.deepcopy(defaults)
    for key, value in sent.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and merged[key]:
            merged[key] = _with_defaults(value, merged[key])
        else:
            merged[key] = value
    return merged


@cache
def _component_rest_body() -> dict[str, Any]:
    """chat_completion_pipeline as the registry serves it: the spec, through the SDK's own serialiser (once)."""
    from tests.azure_wire.component import spec_component

    component = spec_component()
    body = component._to_rest_object().as_dict()
    body.update(
        id=_registry_asset_id("components", component.name, component.version),
        name=component.version,
        type="components",
        systemData=_system_data("2025-06-01T00:00:00.0000000+00:00"),
    )
    return body


class Answer(Exception):
    """A non-2xx answer raised from inside a handler."""

    def __init__(self, status: int, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


def _registry_asset_id(kind: str, name: str, version: str) -> str:
    return f"azureml://registries/{REGISTRY}/{kind}/{name}/versions/{version}"


def error_body(code: str, message: str, detail: str | None = None) -> dict[str, Any]:
    """The recorded ``managementfrontend`` error shape (test_model ... crud_file, the 404)."""
    details = [{"code": detail, "message": message, "details": [], "additionalInfo": []}] if detail else []
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "additionalInfo": [
                {"type": "ComponentName", "info": {"value": "managementfrontend"}},
                {"type": "Correlation", "info": {"value": {"operation": uuid.uuid4().hex, "request": "0" * 16}}},
                {"type": "Environment", "info": {"value": LOCATION}},
                {"type": "Location", "info": {"value": LOCATION}},
                {"type": "Time", "info": {"value": _stamp()}},
            ],
        }
    }


def not_found(what: str, detail: str = "NotFound") -> Answer:
    return Answer(404, "UserError", f"{what} not found.", detail)


@dataclass
class Fault:
    """An injected failure: the next ``times`` requests matching ``method`` and ``path`` get it."""

    method: str
    path: str
    status: int = 503
    times: int = 1
    retry_after: str | None = None
    reset: bool = False  # drop the connection instead of answering
    after_effect: bool = False  # let the request take effect, then fail its answer
    code: str = "ServiceUnavailable"

    def matches(self, sent: Sent) -> bool:
        return (self.method in ("*", sent.method)) and self.path in sent.path


@dataclass
class Operation:
    """One ``mfeOperationsStatus`` operation: ``Updating`` until ``ticks`` ticks have passed."""

    id: str
    ticks: int
    done: Callable[[], str]  # applies the outcome; returns the final status
    status: str = "Updating"
    started: str = field(default_factory=_stamp)
    ended: str = "0001-01-01T00:00:00+00:00"


class WorkspaceEmulator:
    """The service's side of every request the adapter makes, with the state a workspace keeps."""

    def __init__(self, scoring_base: str = "http://127.0.0.1:9/") -> None:
        self._lock = threading.RLock()
        self.scoring_base = scoring_base  # where the loopback scoring stub listens (see scoring.py)
        self.tracking_base = scoring_base + "mlflow"
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, dict[str, Any]]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.busy: dict[str, str] = {}  # resource path -> running operation id
        self.operations: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        self.ticks_per_operation = 1
        self.deployment_outcomes: dict[str, str] = {}  # deployment name -> "Failed" (default Succeeded)
        self.deployment_logs = "Traceback (most recent call last):\nRuntimeError: CUDA out of memory"
        self.registry_models: dict[str, dict[str, Any]] = {BASE_MODEL: {"tags": {}}}
        self.component_available = True
        self.registry_model_listing_404 = False  # the registry answers 404 on the version list itself
        self.clusters: dict[str, dict[str, Any]] = {CLUSTER: {"vmSize": CLUSTER_SIZE, "state": "Succeeded"}}
        self.vm_sizes: list[tuple[str, int]] = [
            ("Standard_DS3_v2", 0),
            (CLUSTER_SIZE, 1),
            ("Standard_ND96asr_v4", 8),
            ("Standard_NC6", 1),
        ]
        self.metrics: dict[str, dict[str, float]] = {}  # job -> metrics its finetune step logs
        self.score_requests: dict[str, list[datetime]] = {}  # endpoint -> when each request came
        self.answer: Any = {"output": "Tides come from the moon's pull."}
        self.page_size = 2
        self._op_ids = itertools.count(1)
        self._routes = self._route_table()

    # --- what a test directs -------------------------------------------------------------------

    def tick(self, times: int = 1) -> None:
        """Let time pass: every long-running operation moves on by ``times`` steps."""
        with self._lock:
            for _ in range(times):
                for operation in list(self.operations.values()):
                    if operation.status != "Updating":
                        continue
                    operation.ticks -= 1
                    if operation.ticks <= 0:
                        operation.status = operation.done()
                        operation.ended = _stamp()

    def settle(self) -> None:
        """Run every operation to its end."""
        while any(op.status == "Updating" for op in self.operations.values()):
            self.tick()

    def set_job_status(self, name: str, status: str, *, metrics: dict[str, float] | None = None) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"{status} is not an Azure ML job status")
        with self._lock:
            self.jobs[name]["properties"]["status"] = status
            if status == "Completed":
                self.metrics[name] = metrics or {"train_loss": 0.91, "eval_loss": 1.07}

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def set_base_model_tags(self, tags: dict[str, str]) -> None:
        self.registry_models[BASE_MODEL]["tags"] = dict(tags)

    # --- dispatch ------------------------------------------------------------------------------

    def handle(self, sent: Sent) -> tuple[int, dict[str, str], Any]:
        """Answer one request as the service would: ``(status, headers, JSON body or None)``."""
        with self._lock:
            fault = next((f for f in self.faults if f.times > 0 and f.matches(sent)), None)
            if fault is not None:
                fault.times -= 1
                if not fault.after_effect:
                    return self._fail(fault)
            try:
                self._check_token(sent)
                answer = self._dispatch(sent)
            except Answer as refusal:
                answer = (
                    refusal.status,
                    {"x-ms-response-type": "error"},
                    error_body(refusal.code, refusal.message, refusal.detail),
                )
            if fault is not None:
                return self._fail(fault)
            status, headers, body = answer
            return status, {**self._standard_headers(sent), **headers}, body

    def _fail(self, fault: Fault) -> tuple[int, dict[str, str], Any]:
        if fault.reset:
            raise ConnectionReset(f"injected reset of {fault.method} {fault.path}")
        headers = {"x-ms-response-type": "error"}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        return fault.status, headers, error_body(fault.code, f"injected {fault.status}: try again later")

    @staticmethod
    def _standard_headers(sent: Sent) -> dict[str, str]:
        correlation = str(uuid.uuid4())
        kind = {"GET": "reads", "DELETE": "deletes"}.get(sent.method, "writes")
        return {
            "x-ms-response-type": "standard",
            "x-ms-correlation-request-id": correlation,
            "x-ms-routing-request-id": f"WESTEUROPE:{datetime.now(UTC):%Y%m%dT%H%M%SZ}:{correlation}",
            f"x-ms-ratelimit-remaining-subscription-{kind}": "249",
        }

    def _check_token(self, sent: Sent) -> None:
        audience = audience_of(sent.headers.get("Authorization", ""))
        if sent.path.startswith("/registrymanagement/") or "/mferp/" in sent.path:
            allowed = ARM_AUDIENCES | {ML_AUDIENCE}
        else:
            allowed = ARM_AUDIENCES
        if audience not in allowed:
            raise Answer(401, "InvalidAuthenticationToken", f"token audience {audience!r} is not valid here")

    def _dispatch(self, sent: Sent) -> tuple[int, dict[str, str], Any]:
        path = sent.path
        query = {k: v[0] for k, v in parse_qs(urlsplit(sent.url).query).items()}
        for method, pattern, handler in self._routes:
            if method == sent.method and (match := pattern.fullmatch(path)):
                return handler(sent, query, **match.groupdict())
        raise Answer(404, "NoRoute", f"the emulator has no route for {sent.method} {path}")

    def _route_table(self) -> list[tuple[str, re.Pattern[str], Callable[..., Any]]]:
        ws = re.escape(
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}{PROVIDER}/workspaces/{WORKSPACE}"
        )
        registry = re.escape(
            f"/mferp/managementfrontend/subscriptions/{REGISTRY_SUBSCRIPTION}/resourceGroups/"
            f"{REGISTRY_RESOURCE_GROUP}{PROVIDER}/registries/{REGISTRY}"
        )
        ops = re.escape(OPERATIONS)
        name = r"(?P<name>[^/]+)"
        endpoint = ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)"
        table = [
            ("GET", r"/registrymanagement/v1\.0/registries/(?P<name>[^/]+)/discovery", self._discovery),
            ("GET", registry + r"/models/" + name + r"/versions", self._registry_model_versions),
            ("GET", registry + r"/models/" + name + r"/versions/(?P<version>[^/]+)", self._registry_model),
            ("GET", registry + r"/components/" + name + r"/versions", self._component_versions),
            ("GET", registry + r"/components/" + name + r"/versions/(?P<version>[^/]+)", self._component),
            ("GET", ws, self._workspace),
            ("GET", ws + r"/computes/" + name, self._compute),
            ("GET", ws + r"/computes", self._computes),
            (
                "GET",
                re.escape(f"/subscriptions/{SUBSCRIPTION}{PROVIDER}/locations/") + r"[^/]+/vmSizes",
                self._vm_sizes,
            ),
            ("PUT", ws + r"/jobs/" + name, self._put_job),
            ("GET", ws + r"/jobs/" + name, self._get_job),
            ("POST", ws + r"/jobs/" + name + r"/cancel", self._cancel_job),
            ("GET", ws + r"/models/" + name + r"/versions", self._model_versions),
            ("GET", ws + r"/models/" + name + r"/versions/(?P<version>[^/]+)", self._get_model),
            ("PUT", ws + r"/models/" + name + r"/versions/(?P<version>[^/]+)", self._put_model),
            ("GET", ws + r"/onlineEndpoints", self._list_endpoints),
            ("PUT", endpoint, self._put_endpoint),
            ("GET", endpoint, self._get_endpoint),
            ("DELETE", endpoint, self._delete_endpoint),
            ("POST", endpoint + r"/listKeys", self._list_keys),
            ("POST", endpoint + r"/token", self._token),
            ("GET", endpoint + r"/deployments", self._list_deployments),
            ("PUT", endpoint + r"/deployments/" + name, self._put_deployment),
            ("GET", endpoint + r"/deployments/" + name, self._get_deployment),
            ("DELETE", endpoint + r"/deployments/" + name, self._delete_deployment),
            ("POST", endpoint + r"/deployments/" + name + r"/getLogs", self._get_logs),
            ("GET", ops + r"/mfeOperationsStatus/(?P<op>[^/]+)", self._operation_status),
            ("GET", ops + r"/mfeOperationResults/(?P<op>[^/]+)", self._operation_result),
            ("GET", ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/providers/Microsoft\.Insights/metrics", self._metrics),
        ]
        return [(method, re.compile(pattern, re.IGNORECASE), handler) for method, pattern, handler in table]

    # --- registry ------------------------------------------------------------------------------

    def _discovery(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        if name != REGISTRY:
            raise Answer(404, "UserError", f"registry {name} not found", "RegistryNotFound")
        body = {
            "registryName": REGISTRY,
            "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "primaryRegion": "eastus",
            "regions": ["eastus", LOCATION],
            "subscriptionId": REGISTRY_SUBSCRIPTION,
            "resourceGroup": REGISTRY_RESOURCE_GROUP,
            "workspaceName": None,
            "primaryRegionResourceProviderUri": REGISTRY_MFE,
        }
        return 200, {}, body

    def _registry_model_body(self, name: str) -> dict[str, Any]:
        return {
            "id": _registry_asset_id("models", name, BASE_MODEL_VERSION),
            "name": BASE_MODEL_VERSION,
            "type": "models",
            "properties": {
                "description": f"{name} from the azureml registry",
                "tags": dict(self.registry_models[name]["tags"]),
                "properties": {},
                "isArchived": False,
                "isAnonymous": False,
                "flavors": {"python_function": {"data": {"loader_module": "mlflow.transformers"}}},
                "modelType": "mlflow_model",
                "modelUri": f"azureml://registries/{REGISTRY}/models/{name}/versions/{BASE_MODEL_VERSION}",
                "jobName": None,
                "provisioningState": "Succeeded",
                "stage": "Production",
            },
            "systemData": _system_data("2024-05-01T00:00:00.0000000+00:00"),
        }

    def _registry_model_versions(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        if self.registry_model_listing_404 or name not in self.registry_models:
            # RECORDED: the version list of a missing container is a 404 ModelNotFound.
            raise not_found(f"Model container with name: {name}", "ModelNotFound")
        return 200, {}, {"value": [self._registry_model_body(name)]}

    def _registry_model(self, sent: Sent, query: dict[str, str], name: str, version: str) -> Any:
        if name not in self.registry_models or version != BASE_MODEL_VERSION:
            raise not_found(f"Model {name}:{version}", "ModelNotFound")
        return 200, {}, self._registry_model_body(name)

    def _component_body(self) -> dict[str, Any]:
        return copy.deepcopy(_component_rest_body())

    def _component_versions(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        if not self.component_available or name != "chat_completion_pipeline":
            return 200, {}, {"value": []}  # an empty list: the SDK raises its own ValidationException
        return 200, {}, {"value": [self._component_body()]}

    def _component(self, sent: Sent, query: dict[str, str], name: str, version: str) -> Any:
        if not self.component_available or name != "chat_completion_pipeline":
            raise not_found(f"Component {name}:{version}", "ComponentNotFound")
        return 200, {}, self._component_body()

    # --- workspace and compute -------------------------------------------------------------------

    def _workspace(self, sent: Sent, query: dict[str, str]) -> Any:
        body = {
            "id": WORKSPACE_ID,
            "name": WORKSPACE,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": LOCATION,
            "tags": {},
            "etag": None,
            "kind": "Default",
            "sku": {"name": "Basic", "tier": "Basic"},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": "tenant"},
            "properties": {
                "friendlyName": WORKSPACE,
                "description": "",
                "storageAccount": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                "Microsoft.Storage/storageAccounts/stftpilot",
                "hbiWorkspace": False,
                "provisioningState": "Succeeded",
                "workspaceId": WORKSPACE_GUID,
                "discoveryUrl": f"https://{LOCATION}.api.azureml.ms/discovery",
                "mlFlowTrackingUri": self.tracking_base,
                "publicNetworkAccess": "Enabled",
                "v1LegacyMode": False,
            },
            "systemData": _system_data("2026-01-01T00:00:00.0000000+00:00"),
        }
        return 200, {}, body

    def _compute_body(self, name: str) -> dict[str, Any]:
        cluster = self.clusters[name]
        return {
            "id": f"{WORKSPACE_ID}/computes/{name}",
            "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "name": name,
            "location": LOCATION,
            "properties": {
                "description": None,
                "createdOn": "2026-01-01T00:00:00.0000000+00:00",
                "modifiedOn": "2026-01-01T00:00:00.0000000+00:00",
                "computeType": "AmlCompute",
                "provisioningState": cluster["state"],
                "provisioningErrors": cluster.get("errors"),
                "isAttachedCompute": False,
                "disableLocalAuth": True,
                "properties": {
                    "vmSize": cluster["vmSize"],
                    "vmPriority": "Dedicated",
                    "osType": "Linux",
                    "scaleSettings": {"maxNodeCount": 2, "minNodeCount": 0, "nodeIdleTimeBeforeScaleDown": "PT2M"},
                    "allocationState": "Steady",
                    "allocationStateTransitionTime": "2026-01-01T00:00:00.000Z",
                    "errors": None,
                    "currentNodeCount": 0,
                    "targetNodeCount": 0,
                    "nodeStateCounts": {
                        "preparingNodeCount": 0,
                        "runningNodeCount": 0,
                        "idleNodeCount": 0,
                        "unusableNodeCount": 0,
                        "leavingNodeCount": 0,
                        "preemptedNodeCount": 0,
                    },
                    "enableNodePublicIp": True,
                },
            },
        }

    def _compute(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        if name not in self.clusters:
            raise not_found(f"Compute {name}", "ComputeNotFound")
        return 200, {}, self._compute_body(name)

    def _computes(self, sent: Sent, query: dict[str, str]) -> Any:
        return 200, {}, {"value": [self._compute_body(name) for name in self.clusters]}

    def _vm_sizes(self, sent: Sent, query: dict[str, str]) -> Any:
        value = [
            {
                "name": size,
                "family": "standardNCADSA100v4Family" if gpus else "standardDSv2Family",
                "vCPUs": 24 if gpus else 4,
                "gpus": gpus,
                "osVhdSizeMB": 1047552,
                "maxResourceVolumeMB": 65536,
                "memoryGB": 220.0 if gpus else 14.0,
                "lowPriorityCapable": True,
                "premiumIO": True,
                "estimatedVMPrices": {
                    "billingCurrency": "USD",
                    "unitOfMeasure": "OneHour",
                    "values": [{"retailPrice": 3.67 if gpus else 0.27, "osType": "Linux", "vmTier": "Standard"}],
                },
                "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
            }
            for size, gpus in self.vm_sizes
        ]
        return 200, {}, {"value": value}

    # --- jobs --------------------------------------------------------------------------------------

    def _put_job(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        body = sent.body or {}
        properties = body.get("properties") or {}
        existing = self.jobs.get(name)
        if existing is not None:
            # RECORDED (pipeline_job_create): a PUT to an existing job name is an update, answered 200.
            for key in ("tags", "displayName", "description"):
                if key in properties:
                    existing["properties"][key] = properties[key]
            existing["systemData"]["lastModifiedAt"] = _stamp()
            return 200, {}, copy.deepcopy(existing)
        stored = copy.deepcopy(body)
        stored.update(
            id=f"{WORKSPACE_ID}/jobs/{name}", name=name, type="Microsoft.MachineLearningServices/workspaces/jobs"
        )
        stored["systemData"] = _system_data()
        props = stored.setdefault("properties", {})
        props["status"] = "NotStarted"
        props.setdefault("experimentName", "Default")
        for key in (
            "description",
            "computeId",
            "identity",
            "componentId",
            "notificationSetting",
            "secretsConfiguration",
            "sourceJobId",
        ):
            props.setdefault(key, None)  # RECORDED: the service answers with each, null when unset
        props["services"] = {
            "Studio": {
                "jobServiceType": "Studio",
                "port": None,
                "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WORKSPACE_ID}",
                "status": None,
                "errorMessage": None,
                "properties": None,
                "nodes": None,
            },
            "Tracking": {
                "jobServiceType": "Tracking",
                "port": None,
                "endpoint": self.tracking_base,
                "status": None,
                "errorMessage": None,
                "properties": None,
                "nodes": None,
            },
        }
        self.jobs[name] = stored
        location = f"{ARM}{WORKSPACE_ID}/jobs/{name}?api-version={query.get('api-version', '')}"
        return 201, {"Location": location}, copy.deepcopy(stored)

    def _job(self, name: str) -> dict[str, Any]:
        if name not in self.jobs:
            raise not_found(f"Job {name}", "JobNotFound")  # ASSUMED: no recording of a missing job
        return self.jobs[name]

    def _get_job(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        return 200, {}, copy.deepcopy(self._job(name))

    def _cancel_job(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        job = self._job(name)
        status = job["properties"]["status"]
        if status in ("Completed", "Failed", "Canceled"):
            return 200, {}, None
        job["properties"]["status"] = "CancelRequested"

        def done() -> str:
            job["properties"]["status"] = "Canceled"
            return "Succeeded"

        operation = self._start(done)
        # SPEC (Job/cancel.json): 202 with a location header.
        return 202, {"Location": self._result_url(operation)}, None

    # --- workspace model versions ---------------------------------------------------------------------

    def _model_body(self, name: str, version: str) -> dict[str, Any]:
        return copy.deepcopy(self.models[name][version])

    def _model_versions(self, sent: Sent, query: dict[str, str], name: str) -> Any:
        if name not in self.models:
            # RECORDED (crud_file): listing the versions of a missing container is 404 ModelNotFound.
            raise not_found(f"Model container with name: {name}", "ModelNotFound")
        versions = list(self.models[name].values())
        if query.get("$orderBy", "").startswith("createdtime"):
            versions.sort(key=lambda body: body["systemData"]["createdAt"], reverse=True)
        limit = int(query.get("$top", self.page_size))
        start = int(query.get("$skipToken", "0") or 0)
        page = versions[start : start + min(limit, self.page_size)]
        body: dict[str, Any] = {"value": [copy.deepcopy(v) for v in page]}
        if start + len(page) < len(versions) and "$top" not in query:
            url = urlsplit(sent.url)
            kept = "&".join(part for part in url.query.split("&") if not part.startswith("$skipToken="))
            body["nextLink"] = f"{url.scheme}://{url.netloc}{url.path}?{kept}&$skipToken={start + len(page)}"
        return 200, {}, body

    def _get_model(self, sent: Sent, query: dict[str, str], name: str, version: str) -> Any:
        if version not in self.models.get(name, {}):
            raise not_found(f"Model {name}:{version}", "ModelNotFound")
        return 200, {}, self._model_body(name, version)

    def _put_model(self, sent: Sent, query: dict[str, str], name: str, version: str) -> Any:
        if not _POSITIVE_INTEGER.fullmatch(version):
            # ASSUMED, on purpose: workspace model versions are positive integers (every recording).
            raise Answer(
                400,
                "UserError",
                f"Model version {version!r} is invalid: versions of workspace models must be positive integers.",
                "InvalidModelVersion",
            )
        properties = (sent.body or {}).get("properties") or {}
        uri = properties.get("modelUri") or ""
        existing = self.models.get(name, {}).get(version)
        if existing is not None:
            if existing["properties"]["modelUri"] != uri:
                # ASSUMED: a version is immutable; another model under a taken version is a conflict.
                raise Answer(
                    409,
                    "UserError",
                    f"Model {name}:{version} already exists with different content.",
                    "ModelVersionConflict",
                )
            existing["properties"]["tags"] = properties.get("tags") or {}
            existing["properties"]["description"] = properties.get("description")
            return 200, {}, self._model_body(name, version)
        job = re.match(r"azureml://jobs/([^/]+)/outputs/", uri)
        if job is None or job.group(1) not in self.jobs:
            raise Answer(400, "UserError", f"modelUri {uri!r} does not name a job output in this workspace")
        if self.jobs[job.group(1)]["properties"]["status"] != "Completed":
            raise Answer(400, "UserError", f"job {job.group(1)} has not completed; its outputs do not exist yet")
        body = {
            "id": f"{WORKSPACE_ID}/models/{name}/versions/{version}",
            "name": version,
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            "properties": {
                "description": properties.get("description"),
                "tags": properties.get("tags") or {},
                "properties": properties.get("properties") or {},
                "isArchived": False,
                "isAnonymous": False,
                "autoDeleteSetting": None,
                # The service reads the MLmodel file of the job output; the chat pipeline logs transformers.
                "flavors": {
                    "python_function": {"data": {"loader_module": "mlflow.transformers", "python_version": "3.10"}},
                    "transformers": {"data": {"task": "chat-completion"}},
                },
                "modelType": properties.get("modelType") or "custom_model",
                "modelUri": uri,
                "jobName": job.group(1),
                "provisioningState": "Succeeded",
                "stage": "Development",
                "intellectualProperty": None,
            },
            "systemData": _system_data(),
        }
        self.models.setdefault(name, {})[version] = body
        location = f"{ARM}{WORKSPACE_ID}/models/{name}/versions/{version}?api-version={query.get('api-version', '')}"
        return 201, {"Location": location}, self._model_body(name, version)

    # --- long-running operations ----------------------------------------------------------------------

    def _start(self, done: Callable[[], str]) -> Operation:
        operation = Operation(f"oeidp:{WORKSPACE_GUID}:{uuid.uuid4()}", self.ticks_per_operation, done)
        self.operations[operation.id] = operation
        return operation

    def _status_url(self, operation: Operation) -> str:
        return f"{ARM}{OPERATIONS}/mfeOperationsStatus/{operation.id}?api-version=2022-02-01-preview"

    def _result_url(self, operation: Operation) -> str:
        return f"{ARM}{OPERATIONS}/mfeOperationResults/{operation.id}?api-version=2022-02-01-preview"

    def _async_headers(self, operation: Operation, location: str) -> dict[str, str]:
        return {
            "Azure-AsyncOperation": self._status_url(operation),
            "Location": location,
            "x-ms-async-operation-timeout": "PT30M",
        }

    def _operation_status(self, sent: Sent, query: dict[str, str], op: str) -> Any:
        operation = self.operations.get(op)
        if operation is None:
            raise not_found(f"Operation {op}")
        body = {
            "id": f"{OPERATIONS}/mfeOperationsStatus/{operation.id}",
            "name": operation.id,
            "startTime": operation.started,
            "endTime": operation.ended,
            "percentComplete": 100.0 if operation.status != "Updating" else 0.0,
            "status": operation.status,
        }
        if operation.status == "Failed":
            body["error"] = {"code": "DeploymentFailed", "message": "the operation failed", "details": []}
        return 200, {}, body

    def _operation_result(self, sent: Sent, query: dict[str, str], op: str) -> Any:
        operation = self.operations.get(op)
        if operation is None:
            raise not_found(f"Operation {op}")
        if operation.status == "Updating":
            return 202, {"Location": self._result_url(operation)}, None
        return 200, {}, None

    def _claim(self, resource: str, what: str) -> None:
        """ASSUMED: one change at a time per endpoint or deployment; a second meanwhile is a 409."""
        running = self.busy.get(resource)
        if running and self.operations[running].status == "Updating":
            raise Answer(
                409,
                "UserError",
                f"{what} has an operation in progress; wait for it to finish.",
                "OperationInProgress",
            )

    # --- online endpoints -------------------------------------------------------------------------------

    def _endpoint(self, name: str) -> dict[str, Any]:
        if name not in self.endpoints:
            raise not_found(f"Online endpoint {name}", "EndpointNotFound")  # ASSUMED: not recorded
        return self.endpoints[name]

    def _endpoint_view(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.endpoints[name])

    def _list_endpoints(self, sent: Sent, query: dict[str, str]) -> Any:
        return 200, {}, {"value": [self._endpoint_view(name) for name in self.endpoints]}

    def _get_endpoint(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        self._endpoint(endpoint)
        return 200, {}, self._endpoint_view(endpoint)

    def _put_endpoint(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        body = sent.body or {}
        properties = body.get("properties") or {}
        resource = f"endpoint/{endpoint}"
        traffic = {k: int(v) for k, v in (properties.get("traffic") or {}).items()}
        self._check_traffic(endpoint, traffic)
        existing = self.endpoints.get(endpoint)
        if existing is not None:
            self._claim(resource, f"Online endpoint {endpoint}")
            if existing["properties"]["provisioningState"] == "Deleting":
                raise Answer(409, "UserError", f"Online endpoint {endpoint} is being deleted.", "EndpointDeleting")
        if existing is None or existing["properties"]["provisioningState"] == "Failed":
            stored = {
                "id": f"{WORKSPACE_ID}/onlineEndpoints/{endpoint}",
                "name": endpoint,
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                "properties": {
                    "description": properties.get("description"),
                    "properties": {"azureml.onlineendpointid": f"{WORKSPACE_ID.lower()}/onlineendpoints/{endpoint}"},
                    "scoringUri": None,
                    "swaggerUri": None,
                    "authMode": properties.get("authMode", "Key"),
                    "provisioningState": "Creating",
                    "compute": None,
                    "traffic": {},
                    "mirrorTraffic": {},
                    "publicNetworkAccess": "Enabled",
                },
                "systemData": _system_data(),
                "tags": body.get("tags") or {},
                "location": body.get("location", LOCATION),
                "kind": "Managed",
                "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": "tenant"},
            }
            self.endpoints[endpoint] = stored
            status = 201
        else:
            stored = existing
            stored["properties"]["provisioningState"] = "Updating"
            stored["tags"] = body.get("tags") or stored["tags"]
            stored["properties"]["description"] = properties.get("description")
            stored["systemData"]["lastModifiedAt"] = _stamp()
            status = 200

        def done() -> str:
            if endpoint not in self.endpoints:
                return "Failed"
            props = self.endpoints[endpoint]["properties"]
            props["provisioningState"] = "Succeeded"
            props["traffic"] = traffic
            base = f"{self.scoring_base}{endpoint}"
            props["scoringUri"] = f"{base}/score"
            props["swaggerUri"] = f"{base}/swagger.json"
            self.keys.setdefault(endpoint, (uuid.uuid4().hex + uuid.uuid4().hex, uuid.uuid4().hex + uuid.uuid4().hex))
            return "Succeeded"

        operation = self._start(done)
        self.busy[resource] = operation.id
        stored["properties"]["properties"]["AzureAsyncOperationUri"] = self._status_url(operation)
        location = f"{ARM}{WORKSPACE_ID}/onlineEndpoints/{endpoint}?api-version={query.get('api-version', '')}"
        return status, self._async_headers(operation, location), self._endpoint_view(endpoint)

    def _check_traffic(self, endpoint: str, traffic: dict[str, int]) -> None:
        """ASSUMED: traffic names existing deployments and adds up to 100 (or nothing takes any)."""
        unknown = sorted(d for d in traffic if (endpoint, d) not in self.deployments)
        if unknown:
            raise Answer(
                400, "UserError", f"Traffic names deployments that do not exist: {', '.join(unknown)}", "BadTraffic"
            )
        total = sum(traffic.values())
        if traffic and total not in (0, 100):
            raise Answer(400, "UserError", f"Traffic must add up to 100, not {total}.", "BadTraffic")

    def _delete_endpoint(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        if endpoint not in self.endpoints:
            return 204, {}, None  # SPEC (OnlineEndpoint/delete.json): 204 when there is nothing to delete
        resource = f"endpoint/{endpoint}"
        self._claim(resource, f"Online endpoint {endpoint}")
        self.endpoints[endpoint]["properties"]["provisioningState"] = "Deleting"

        def done() -> str:
            self.endpoints.pop(endpoint, None)
            for key in [key for key in self.deployments if key[0] == endpoint]:
                del self.deployments[key]
            self.keys.pop(endpoint, None)
            return "Succeeded"

        operation = self._start(done)
        self.busy[resource] = operation.id
        # RECORDED (endpoint_e2e): 202, Azure-AsyncOperation, Location on mfeOperationResults, body "null".
        return 202, self._async_headers(operation, self._result_url(operation)), "null"

    def _list_keys(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        stored = self._endpoint(endpoint)
        if stored["properties"]["authMode"].lower() != "key" or endpoint not in self.keys:
            raise Answer(400, "UserError", f"Online endpoint {endpoint} does not use key authentication.")
        primary, secondary = self.keys[endpoint]
        return 200, {}, {"primaryKey": primary, "secondaryKey": secondary}

    def _token(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        self._endpoint(endpoint)
        now = int(datetime.now(UTC).timestamp())
        return (
            200,
            {},
            {
                "accessToken": uuid.uuid4().hex,
                "tokenType": "Bearer",
                "expiryTimeUtc": now + 43200,
                "refreshAfterTimeUtc": now + 21600,
            },
        )

    # --- deployments ----------------------------------------------------------------------------------

    def _deployment(self, endpoint: str, name: str) -> dict[str, Any]:
        self._endpoint(endpoint)
        if (endpoint, name) not in self.deployments:
            raise not_found(f"Deployment {endpoint}/{name}", "DeploymentNotFound")  # ASSUMED: not recorded
        return self.deployments[(endpoint, name)]

    def _list_deployments(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        self._endpoint(endpoint)
        value = [copy.deepcopy(body) for (ep, _), body in self.deployments.items() if ep == endpoint]
        return 200, {}, {"value": value}

    def _get_deployment(self, sent: Sent, query: dict[str, str], endpoint: str, name: str) -> Any:
        return 200, {}, copy.deepcopy(self._deployment(endpoint, name))

    def _put_deployment(self, sent: Sent, query: dict[str, str], endpoint: str, name: str) -> Any:
        stored_endpoint = self._endpoint(endpoint)
        if stored_endpoint["properties"]["provisioningState"] in ("Creating", "Deleting"):
            raise Answer(
                409, "UserError", f"Online endpoint {endpoint} is {stored_endpoint['properties']['provisioningState']}."
            )
        body = sent.body or {}
        properties = copy.deepcopy(body.get("properties") or {})
        resource = f"deployment/{endpoint}/{name}"
        self._claim(resource, f"Deployment {endpoint}/{name}")
        model = properties.get("model") or ""
        if not self._model_exists(model):
            raise Answer(400, "UserError", f"Model {model!r} does not exist.", "ModelNotFound")
        existing = self.deployments.get((endpoint, name))
        properties = _with_defaults(properties, _DEPLOYMENT_DEFAULTS)
        properties["provisioningState"] = "Creating" if existing is None else "Updating"
        stored = {
            "id": f"{WORKSPACE_ID}/onlineEndpoints/{endpoint}/deployments/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "properties": properties,
            "systemData": _system_data(existing["systemData"]["createdAt"] if existing else None),
            "tags": body.get("tags") or {},
            "location": body.get("location", LOCATION),
            "kind": "Managed",
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": "tenant"},
            "sku": {
                "name": "Default",
                "tier": "Standard",
                "size": None,
                "family": None,
                "capacity": 1,
                **(body.get("sku") or {}),
            },
        }
        self.deployments[(endpoint, name)] = stored

        def done() -> str:
            current = self.deployments.get((endpoint, name))
            if current is None:
                return "Failed"
            outcome = self.deployment_outcomes.get(name, "Succeeded")
            current["properties"]["provisioningState"] = outcome
            return outcome

        operation = self._start(done)
        self.busy[resource] = operation.id
        location = f"{ARM}{WORKSPACE_ID}/onlineEndpoints/{endpoint}/deployments/{name}"
        return 201 if existing is None else 200, self._async_headers(operation, location), copy.deepcopy(stored)

    def _model_exists(self, model: str) -> bool:
        match = re.search(r"/models/([^/]+)/versions/([^/]+)$", model) or re.fullmatch(r"azureml:([^:]+):(.+)", model)
        return bool(match) and match.group(2) in self.models.get(match.group(1), {})

    def _delete_deployment(self, sent: Sent, query: dict[str, str], endpoint: str, name: str) -> Any:
        if endpoint not in self.endpoints or (endpoint, name) not in self.deployments:
            return 204, {}, None  # SPEC (OnlineDeployment/delete.json): 204
        if self.endpoints[endpoint]["properties"]["traffic"].get(name):
            # ASSUMED: the service refuses to delete a deployment that still takes traffic.
            raise Answer(
                400,
                "UserError",
                f"Deployment {name} takes traffic on endpoint {endpoint}; move its traffic first.",
                "DeploymentHasTraffic",
            )
        resource = f"deployment/{endpoint}/{name}"
        self._claim(resource, f"Deployment {endpoint}/{name}")
        self.deployments[(endpoint, name)]["properties"]["provisioningState"] = "Deleting"

        def done() -> str:
            self.deployments.pop((endpoint, name), None)
            return "Succeeded"

        operation = self._start(done)
        self.busy[resource] = operation.id
        return 202, self._async_headers(operation, self._result_url(operation)), None

    def _get_logs(self, sent: Sent, query: dict[str, str], endpoint: str, name: str) -> Any:
        self._deployment(endpoint, name)
        tail = int((sent.body or {}).get("tail") or 0)
        lines = self.deployment_logs.splitlines()
        return 200, {}, {"content": "\n".join(lines[-tail:] if tail else lines)}

    # --- Azure Monitor ------------------------------------------------------------------------------------

    def _metrics(self, sent: Sent, query: dict[str, str], endpoint: str) -> Any:
        resource = f"{WORKSPACE_ID}/onlineEndpoints/{endpoint}"
        if endpoint not in self.endpoints:
            # ASSUMED: Azure Monitor's own error shape for a resource that does not exist.
            return (
                404,
                {"x-ms-response-type": "error"},
                {
                    "code": "ResourceNotFound",
                    "message": f"The Resource '{resource}' was not found.",
                },
            )
        start_text, _, end_text = query["timespan"].partition("/")
        start = datetime.fromisoformat(start_text.replace("Z", "+00:00"))
        end = datetime.fromisoformat(end_text.replace("Z", "+00:00"))
        minutes: dict[datetime, int] = {}
        for moment in self.score_requests.get(endpoint, []):
            minute = moment.replace(second=0, microsecond=0)
            if start <= moment and minute < end:  # the current minute counts as far as it has come
                minutes[minute] = minutes.get(minute, 0) + 1
        data = [{"timeStamp": _stamp(minute), "average": float(count)} for minute, count in sorted(minutes.items())]
        body = {
            "cost": 0,
            "timespan": query["timespan"],
            "interval": query.get("interval", "PT1M"),
            "value": [
                {
                    "id": f"{resource}/providers/Microsoft.Insights/metrics/RequestsPerMinute",
                    "type": "Microsoft.Insights/metrics",
                    "name": {"value": "RequestsPerMinute", "localizedValue": "Requests Per Minute"},
                    "displayDescription": "The number of requests sent to the endpoint within a minute",
                    "unit": "Count",
                    "timeseries": [{"metadatavalues": [], "data": data}],
                    "errorCode": "Success",
                }
            ],
            "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "resourceregion": LOCATION,
        }
        return 200, {}, body

    # --- the data plane: scoring and MLflow (served on loopback by scoring.py) --------------------------------

    def score(self, endpoint: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        """A scoring request to ``endpoint``'s URI: the key, the deployment header and the chat body are checked."""
        with self._lock:
            if endpoint not in self.endpoints or endpoint not in self.keys:
                return 404, {"message": f"endpoint {endpoint} not found"}
            authorization = headers.get("authorization", "")
            if authorization not in (f"Bearer {key}" for key in self.keys[endpoint]):
                return 401, {"message": "key_auth_access_denied"}
            deployment = headers.get("azureml-model-deployment")
            if deployment is not None:
                stored = self.deployments.get((endpoint, deployment))
                if stored is None or stored["properties"]["provisioningState"] != "Succeeded":
                    return 404, {"message": f"deployment {deployment} is not ready"}
            conversations = ((body or {}).get("input_data") or {}).get("input_string")
            if not isinstance(conversations, list) or not conversations or conversations[0][-1]["role"] != "user":
                return 400, {
                    "message": "input_data.input_string must be a list of conversations ending with a user turn"
                }
            self.score_requests.setdefault(endpoint, []).append(datetime.now(UTC))
            answer = self.answer
        if isinstance(answer, tuple):
            return answer
        return 200, answer

    def mlflow(self, route: str, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        """The MLflow REST calls the metrics reader makes: a job run, its pipeline node, its finetune step."""
        with self._lock:
            runs = self._mlflow_runs()
        if route == "runs/get":
            run = runs.get(query.get("run_id", ""))
            if run is None:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run not found"}
            return 200, {"run": run}
        if route == "runs/search":
            parent = str(body.get("filter", "")).split("'")[1]
            tag = {"key": "mlflow.parentRunId", "value": parent}
            children = [r for r in runs.values() if tag in r["data"]["tags"]]
            return 200, {"runs": children}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": route}

    def _mlflow_runs(self) -> dict[str, dict[str, Any]]:
        runs: dict[str, dict[str, Any]] = {}
        for job, metrics in self.metrics.items():
            node, step = f"{job}-chat_completion_pipeline", f"{job}-finetune"
            stamp = int(datetime.now(UTC).timestamp() * 1000)
            for run_id, parent, values in ((job, None, {}), (node, job, {}), (step, node, metrics)):
                tags = [{"key": "mlflow.parentRunId", "value": parent}] if parent else []
                runs[run_id] = {
                    "info": {"run_id": run_id, "experiment_id": "1"},
                    "data": {
                        "tags": tags,
                        "metrics": [{"key": k, "value": v, "timestamp": stamp, "step": 0} for k, v in values.items()],
                    },
                }
        return runs
