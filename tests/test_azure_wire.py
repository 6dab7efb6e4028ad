"""The workspace emulator kept honest against recorded service traffic, and the Azure flow over it.

Three kinds of test:

* Replay: recorded responses (``../shared/fixtures/azureml/rest/recordings``) are served to the real
  SDK clients and read back through the adapter, so the adapter is known to read what the service
  really sends.
* Shape: route by route, the emulator's answers carry every key of the recorded (or spec) answer,
  with the same JSON type, so the emulator cannot drift from the service unnoticed.
* Faults and the whole flow: errors as the service sends them, translated to the port's kinds;
  upload to idle deletion over Azurite and the emulator, with the ARM calls one rollout makes counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from shared.platform.azureml.endpoints import endpoint_info
from shared.platform.azureml.models import model_info
from shared.platform.azureml.submit import job_info
from shared.platform.port import (
    ConflictError,
    DataRef,
    DeploymentRequest,
    EndpointRequest,
    FineTuneRequest,
    JobStatus,
    ModelRequest,
    NotFoundError,
    PlatformConfigError,
    ProvisioningState,
    TransientError,
)
from tests.azure_wire.emulator import BASE_MODEL, Fault
from tests.azure_wire.transport import Answered, JwtCredential, Sent, WireRecorder
from tests.azure_wire.workspace import Wire
from tests.paths import FIXTURES

pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

REST = FIXTURES / "azureml" / "rest"
WS = "/subscriptions/*/resourcegroups/*/providers/microsoft.machinelearningservices/workspaces/*"
RECORDINGS = REST / "recordings"
SPECS = REST / "specs"
ENDPOINT_E2E = "test_online_endpoint.pyTestOnlineEndpointtest_online_endpoint_e2e.json"
MODEL_CRUD = "test_model.pyTestModeltest_crud_file.json"
MODEL_LATEST = "test_model.pyTestModeltest_models_get_latest_label.json"
PIPELINE_JOB = "test_pipeline_job.pyTestPipelineJobtest_pipeline_job_create.json"
_COLLECTIONS = re.compile(
    r"/(onlineEndpoints|deployments|models|versions|jobs|computes|mfeOperationsStatus|mfeOperationResults|"
    r"workspaces|resourceGroups|subscriptions|locations)/[^/]+",
    re.IGNORECASE,
)


def route(method: str, url: str) -> str:
    """A request's route, names left out: ``GET /subscriptions/*/.../onlineEndpoints/*``."""
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    return f"{method} " + _COLLECTIONS.sub(lambda m: f"/{m.group(1)}/*", path).lower()


def recorded(name: str) -> list[dict[str, Any]]:
    return json.loads((RECORDINGS / name).read_text(encoding="utf-8"))["Entries"]


def spec_body(relative: str, status: str = "200") -> Any:
    return json.loads((SPECS / relative).read_text(encoding="utf-8"))["responses"][status]["body"]


# --- replay: what the service sent, read by the real SDK and the adapter ----------------------


class Replay:
    """Answers each request with the next recorded answer on its route (a stand-in emulator)."""

    def __init__(self, *recordings: str, errors: bool = True) -> None:
        self.answers: dict[str, list[dict[str, Any]]] = {}
        for name in recordings:
            for entry in recorded(name):
                if not errors and entry["StatusCode"] >= 400:
                    continue
                self.answers.setdefault(route(entry["RequestMethod"], entry["RequestUri"]), []).append(entry)

    def handle(self, sent: Sent) -> tuple[int, dict[str, str], Any]:
        key = route(sent.method, sent.url)
        if key not in self.answers:
            return 404, {"x-ms-response-type": "error"}, {"error": {"code": "NotRecorded", "message": key}}
        queue = self.answers[key]
        entry = queue.pop(0) if len(queue) > 1 else queue[0]
        headers = {k: v for k, v in entry["ResponseHeaders"].items() if k.lower() not in ("content-length",)}
        return entry["StatusCode"], headers, entry["ResponseBody"]


def replayed_client(*recordings: str, errors: bool = True) -> Any:
    from azure.ai.ml import MLClient

    transport = WireRecorder(Replay(*recordings, errors=errors)).transport()  # type: ignore[arg-type]
    return MLClient(JwtCredential(), "00000000-0000-0000-0000-000000000", "00000", "00000", transport=transport)


def test_a_recorded_model_version_reads_as_an_integer_version_with_its_flavors() -> None:
    client = replayed_client(MODEL_CRUD)
    model = client.models.get("test_907403507619", "3")
    info = model_info(model)
    assert (info.name, info.version) == ("test_907403507619", "3")
    assert info.id.endswith("/models/test_907403507619/versions/3")
    assert model.flavors  # the deserialiser needs them: the emulator sends them too


def test_the_recorded_latest_lookup_and_its_paging_read_back() -> None:
    client = replayed_client(MODEL_LATEST, errors=False)
    versions = [model.version for model in client.models.list(name="test_369446287788")]
    assert versions and all(v.isdigit() for v in versions)


def test_a_recorded_missing_model_container_reads_as_no_versions() -> None:
    from shared.platform.azureml.models import list_versions

    assert list_versions(replayed_client(MODEL_CRUD), "test_907403507619") == []  # the recorded first answer: 404


def test_a_recorded_endpoint_reads_through_the_adapter() -> None:
    client = replayed_client(ENDPOINT_E2E)
    info = endpoint_info(client.online_endpoints.get("online-ept-6696557f8dec409"))
    assert info.state in (ProvisioningState.CREATING, ProvisioningState.UPDATING, ProvisioningState.SUCCEEDED)
    assert info.tags == {"endpointkey1": "newval1", "dummy": "dummy"}


def test_a_recorded_pipeline_job_reads_through_the_adapter() -> None:
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase
    from azure.ai.ml.entities import Job

    (put,) = [e for e in recorded(PIPELINE_JOB) if e["RequestMethod"] == "PUT" and e["StatusCode"] == 201]
    info = job_info(Job._from_rest_object(JobBase(put["ResponseBody"])))
    assert (info.name, info.status) == (put["ResponseBody"]["name"], JobStatus.QUEUED)
    assert info.studio_url and info.studio_url.startswith("https://ml.azure.com/runs/")


# --- shape: the emulator's answers cover the recorded and spec ones ----------------------------


# Objects whose keys are data (tags, user properties, MLflow flavors, traffic), not the service's schema.
_MAPS = {"tags", "flavors", "traffic", "mirrorTraffic", "environmentVariables", "data", "userAssignedIdentities"}


def _is_map(where: str, value: dict[str, Any]) -> bool:
    name = where.rsplit("/", 1)[-1]
    return name in _MAPS or where.endswith("/properties/properties") or "string" in value


def shape_gaps(recorded_value: Any, emulated: Any, where: str = "") -> list[str]:
    """Keys of ``recorded_value`` missing in ``emulated``, and values of another JSON type (null matches all)."""
    if recorded_value is None or emulated is None:
        return []
    if isinstance(recorded_value, dict):
        if not isinstance(emulated, dict):
            return [f"{where or '/'}: object expected, got {type(emulated).__name__}"]
        if _is_map(where, recorded_value):
            return []
        gaps = []
        for key, value in recorded_value.items():
            if key not in emulated:
                gaps.append(f"{where}/{key}: missing")
            else:
                gaps.extend(shape_gaps(value, emulated[key], f"{where}/{key}"))
        return gaps
    if isinstance(recorded_value, list):
        if not isinstance(emulated, list):
            return [f"{where}: array expected"]
        return shape_gaps(recorded_value[0], emulated[0], f"{where}[0]") if recorded_value and emulated else []
    kinds = (bool, int | float, str)
    for kind in kinds:
        if isinstance(recorded_value, kind):
            return [] if isinstance(emulated, kind) else [f"{where}: {type(recorded_value).__name__} expected"]
    return []


# Keys a recording has that depend on the recorded workspace's own set-up, not on the route.
_SETUP_SPECIFIC = {"/properties/jobs", "/properties/inputs", "/properties/outputs", "/properties/settings"}


@pytest.fixture(scope="module")
def emulated() -> Iterator[dict[str, list[Answered]]]:
    """One flow through the emulator with every route the adapter uses, answers grouped by route."""
    wire = Wire.start()
    platform = wire.platform()
    emulator = wire.emulator
    platform.get_job("ftpilot-missing")
    job = FineTuneRequest(
        "ftpilot-j1", BASE_MODEL, DataRef("datasets", "a/t.jsonl"), DataRef("datasets", "a/e.jsonl"), "d"
    )
    platform.submit_finetune(job)
    emulator.inject(Fault("GET", "/jobs/ftpilot-j1", status=404, code="UserError"))  # a racing look: PUT again
    platform.submit_finetune(job)
    emulator.set_job_status("ftpilot-j1", "Completed")
    platform.get_job("ftpilot-j1")
    platform.get_model("m", "1")
    model = platform.register_model(ModelRequest("m", "r1", "ftpilot-j1", "d"))
    platform.register_model(ModelRequest("m", "r1", "ftpilot-j1", "d"))  # found by its tag in the list
    platform.get_model("m", model.version)
    platform.begin_create_endpoint(EndpointRequest("ep-one", "d"))
    emulator.settle()
    platform.begin_create_deployment(DeploymentRequest("ep-one", "blue", model.id, "Standard_NC24ads_A100_v4"))
    emulator.deployment_outcomes["red"] = "Failed"
    platform.begin_create_deployment(DeploymentRequest("ep-one", "red", model.id, "Standard_NC24ads_A100_v4"))
    emulator.settle()
    platform.get_deployment("ep-one", "red")
    platform.get_endpoint("ep-one")
    platform.ml_client.online_endpoints.get_keys("ep-one")
    platform.begin_set_traffic("ep-one", {"blue": 100})
    emulator.settle()
    platform.begin_delete_deployment("ep-one", "red")
    platform.begin_delete_endpoint("ep-one")
    emulator.settle()
    by_route: dict[str, list[Answered]] = {}
    for answer in wire.recorder.answers:
        by_route.setdefault(route(answer.request.method, answer.request.url), []).append(answer)
    yield by_route
    wire.close()


def emulated_answer(emulated: dict[str, list[Answered]], key: str, status: int) -> Answered:
    matching = [a for a in emulated.get(key, []) if a.status == status]
    assert matching, f"the emulator never answered {key} with {status}; it answered {sorted(emulated)}"
    return matching[0]


def recorded_pairs() -> list[tuple[str, int, Any, dict[str, str]]]:
    """(route, status, body, headers) of every recorded answer on a route the adapter uses."""
    pairs = []
    seen = set()
    for name in (ENDPOINT_E2E, MODEL_CRUD, MODEL_LATEST, PIPELINE_JOB):
        for entry in recorded(name):
            key = route(entry["RequestMethod"], entry["RequestUri"])
            if "/datastores/" in key or "/components/" in key or "/computes/" in key or "/token" in key:
                continue  # not routes of ftpilot's (computes: the recording is a CPU cluster; see the spec test)
            if key == f"GET {WS}":
                continue  # the workspace: compared by the keys the SDK and ftpilot read, below
            if (key, entry["StatusCode"]) in seen or "blob.core" in entry["RequestUri"]:
                continue
            seen.add((key, entry["StatusCode"]))
            pairs.append((key, entry["StatusCode"], entry["ResponseBody"], entry["ResponseHeaders"]))
    return pairs


@pytest.mark.parametrize(("key", "status", "body", "headers"), recorded_pairs(), ids=lambda v: str(v)[:60])
def test_each_recorded_route_is_answered_in_the_recorded_shape(emulated, key, status, body, headers) -> None:
    answer = emulated_answer(emulated, key, status)
    if isinstance(body, dict) and "value" in body and body["value"]:
        gaps = shape_gaps(body["value"][0], answer.body["value"][0] if answer.body.get("value") else None)
    else:
        gaps = [g for g in shape_gaps(body, answer.body) if not any(g.startswith(s) for s in _SETUP_SPECIFIC)]
    assert gaps == []
    for header in ("Azure-AsyncOperation", "Location", "x-ms-async-operation-timeout"):
        if header in headers:
            assert header.lower() in {h.lower() for h in answer.headers}, header
    if headers.get("x-ms-response-type") == "error":
        assert answer.headers["x-ms-response-type"] == "error"


@pytest.mark.parametrize(
    ("spec", "key", "status"),
    [
        (
            "2024-10-01/OnlineDeployment/ManagedOnlineDeployment/get.json",
            f"GET {WS}/onlineendpoints/*/deployments/*",
            200,
        ),
        (
            "2024-10-01/Compute/get/AmlCompute.json",
            f"GET {WS}/computes/*",
            200,
        ),
        (
            "2024-10-01/VirtualMachineSize/list.json",
            "GET /subscriptions/*/providers/microsoft.machinelearningservices/locations/*/vmsizes",
            200,
        ),
        (
            "2021-03-01-preview/OnlineEndpoint/listKeys.json",
            f"POST {WS}/onlineendpoints/*/listkeys",
            200,
        ),
        (
            "2024-10-01/OnlineDeployment/getLogs.json",
            f"POST {WS}/onlineendpoints/*/deployments/*/getlogs",
            200,
        ),
        (
            "2024-10-01/Workspace/ModelVersion/get.json",
            f"GET {WS}/models/*/versions/*",
            200,
        ),
    ],
    ids=["deployment", "compute", "vm-sizes", "list-keys", "get-logs", "model-version"],
)
def test_each_spec_example_is_answered_in_its_shape(emulated, spec: str, key: str, status: int) -> None:
    body = spec_body(spec)
    answer = emulated_answer(emulated, key, status)
    expected = body["value"][0] if "value" in body else body
    got = answer.body["value"][0] if "value" in body else answer.body
    # The spec's placeholders carry every optional block (identity, environment, code); ftpilot's
    # deployments have no code or environment (MLflow), and its endpoints a system identity only.
    optional = {
        "/properties/codeConfiguration",
        "/properties/environmentId",
        "/properties/environmentVariables",
        "/identity/userAssignedIdentities",
        "/properties/properties/subnet",
        "/properties/description",
    }
    gaps = [g for g in shape_gaps(expected, got) if not any(g.startswith(o) for o in optional)]
    assert gaps == []


def test_the_workspace_carries_what_the_sdk_and_ftpilot_read(emulated) -> None:
    (entry,) = [e for e in recorded(ENDPOINT_E2E) if route(e["RequestMethod"], e["RequestUri"]) == f"GET {WS}"]
    read = ("workspaceId", "discoveryUrl", "mlFlowTrackingUri", "provisioningState", "storageAccount")
    body = entry["ResponseBody"]
    expected = {
        **{k: body[k] for k in ("id", "name", "type", "location")},
        "properties": {k: body["properties"][k] for k in read if k in body["properties"]},
    }
    assert set(expected["properties"]) >= {"workspaceId", "mlFlowTrackingUri"}
    assert shape_gaps(expected, emulated_answer(emulated, f"GET {WS}", 200).body) == []


def test_deletes_of_what_is_gone_answer_as_the_spec_says(emulated) -> None:
    spec = json.loads((SPECS / "2024-10-01/Workspace/OnlineEndpoint/delete.json").read_text(encoding="utf-8"))
    allowed = {int(status) for status in spec["responses"]}
    statuses = {a.status for key, answers in emulated.items() if key.startswith("DELETE") for a in answers}
    assert statuses and statuses <= allowed


# --- faults: the service's errors, as the port's kinds ---------------------------------------------


@pytest.fixture
def wire() -> Iterator[Wire]:
    wire = Wire.start()
    yield wire
    wire.close()


def test_a_transient_error_inside_the_sdks_retry_budget_is_absorbed(wire: Wire) -> None:
    platform = wire.platform()
    wire.emulator.inject(Fault("GET", "/jobs/", status=503, times=2, retry_after="0"))
    assert platform.get_job("ftpilot-x") is None
    assert len([s for s in wire.recorder.calls() if "/jobs/" in s.path]) == 3


@pytest.mark.parametrize(
    "fault",
    [
        Fault("GET", "/jobs/", status=429, times=99, retry_after="1", code="TooManyRequests"),
        Fault("GET", "/jobs/", status=500, times=99, code="InternalServerError"),
        Fault("GET", "/jobs/", status=503, times=99, code="ServiceUnavailable"),
        Fault("GET", "/jobs/", reset=True, times=99),
    ],
    ids=["429", "500", "503", "reset"],
)
def test_transient_trouble_past_the_budget_is_a_transient_error(wire: Wire, fault: Fault) -> None:
    platform = wire.platform(retries={"retry_total": 1, "retry_connect": 1, "retry_read": 1})
    wire.emulator.inject(fault)
    with pytest.raises(TransientError) as caught:
        platform.get_job("ftpilot-x")
    assert type(caught.value).__module__ == "shared.platform.port"
    if fault.retry_after:
        assert caught.value.retry_after_s == 1.0
    assert "get job ftpilot-x" in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "kind", "fragment"),
    [
        (Fault("GET", "/jobs/", status=403, code="AuthorizationFailed"), PlatformConfigError, "role assignments"),
        (Fault("GET", "/jobs/", status=401, code="InvalidAuthenticationToken"), PlatformConfigError, "identity"),
        (Fault("PUT", "/onlineEndpoints/", status=400, code="QuotaExceeded"), PlatformConfigError, "QuotaExceeded"),
        (Fault("PUT", "/onlineEndpoints/", status=409, code="Conflict"), ConflictError, "HTTP 409"),
    ],
    ids=["403", "401", "quota", "409"],
)
def test_refusals_are_the_ports_errors_with_the_services_words(wire: Wire, fault: Fault, kind, fragment) -> None:
    platform = wire.platform()
    wire.emulator.inject(fault)
    with pytest.raises(kind, match=fragment) as caught:
        if fault.method == "GET":
            platform.get_job("ftpilot-x")
        else:
            platform.begin_create_endpoint(EndpointRequest("ep-one", "d"))
    assert type(caught.value).__module__ == "shared.platform.port"
    assert caught.value.__cause__ is not None  # the SDK's error stays attached for the logs


def test_a_create_whose_answer_is_lost_after_it_took_effect_is_found_on_the_retry(wire: Wire) -> None:
    """The service made the endpoint, then the answer failed: the retried create leaves it alone."""
    platform = wire.platform(retries={"retry_total": 0})
    wire.emulator.inject(Fault("PUT", "/onlineEndpoints/ep-one", status=503, after_effect=True))
    with pytest.raises(TransientError):
        platform.begin_create_endpoint(EndpointRequest("ep-one", "d"))
    platform.begin_create_endpoint(EndpointRequest("ep-one", "d"))
    assert len([s for s in wire.recorder.calls() if s.method == "PUT"]) == 1
    wire.emulator.settle()
    endpoint = platform.get_endpoint("ep-one")
    assert endpoint is not None and endpoint.state is ProvisioningState.SUCCEEDED


def test_a_missing_endpoint_answers_not_found_everywhere(wire: Wire) -> None:
    platform = wire.platform()
    assert platform.get_endpoint("nope") is None
    assert platform.get_deployment("nope", "blue") is None
    assert platform.list_deployments("nope") == []
    platform.begin_delete_endpoint("nope")
    platform.begin_delete_deployment("nope", "blue")
    with pytest.raises(NotFoundError):
        platform.begin_create_deployment(DeploymentRequest("nope", "blue", "azureml:m:1", "Standard_NC24ads_A100_v4"))
