"""infra/: the ARM template against Azure's own schemas, its wiring to the app, and the post-deploy hook.

What this cannot prove: that Azure accepts the deployment (quotas, region support, the order in
which role assignments propagate). Only a first real ``azd up`` does; the README says so.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.credentials import AccessToken

from infra import postdeploy
from shared.config import Settings
from shared.run_events import PIPELINE_RUN, RUN_TYPES
from tests.arm import Finding, load, validate_parameters, validate_template
from tests.azure_wire.transport import Sent, WireRecorder
from tests.paths import REPO

INFRA = REPO / "infra"
TEMPLATE = load(INFRA / "ftpilot.json")

# Built-in role names and ids as learn.microsoft.com lists them ("Azure built-in roles", read 2026-12-02):
# a second, independent transcription of what the template's `roles` variable says.
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "AzureML Data Scientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "Monitoring Reader": "43d0d8ad-25c7-4714-9337-8ba259a9fe05",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "EventGrid Data Sender": "d5a91429-5739-47e2-a06b-3470a27159e7",
}
BROAD_ROLES = {"b24988ac-6180-42a0-ab88-20f7382dd24c", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"}  # Contributor, Owner


def resource(kind: str, template: dict[str, Any] = TEMPLATE) -> dict[str, Any]:
    """The one resource of a type (of two storage accounts, ftpilot's own: the workspace's is conditional)."""
    found = [r for r in template["resources"] if r["type"] == kind]
    if len(found) > 1:
        found = [r for r in found if "condition" not in r]
    (only,) = found
    return only


def app_settings(template: dict[str, Any] = TEMPLATE) -> dict[str, str]:
    site = resource("Microsoft.Web/sites", template)
    return {s["name"]: s["value"] for s in site["properties"]["siteConfig"]["appSettings"]}


def test_the_template_passes_azures_schemas() -> None:
    assert validate_template(TEMPLATE) == []


def _set(path: str, value: Any) -> Any:
    """A change to one resource of the template: 'Type:key.key' set to value (None deletes)."""
    kind, keys = path.split(":")

    def change(template: dict[str, Any]) -> None:
        node = resource(kind, template)
        *parents, last = keys.split(".")
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return change


SITE, STORAGE, TOPIC = "Microsoft.Web/sites", "Microsoft.Storage/storageAccounts", "Microsoft.EventGrid/topics"
COMPUTE = "Microsoft.MachineLearningServices/workspaces/computes"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set(f"{STORAGE}:kind", "StorageV3"), "$.resources[1].kind: 'StorageV3' is not one of"),
        (_set(f"{STORAGE}:properties.supportsHttpsTrafficOnlyX", True), "supportsHttpsTrafficOnlyX' is not a property"),
        (_set(f"{SITE}:properties.functionAppConfig.runtme", {}), "functionAppConfig.runtme: 'runtme' is not"),
        (_set(f"{SITE}:properties.functionAppConfig.runtime.name", "python3"), "'python3' is not one of"),
        (_set(f"{SITE}:properties.functionAppConfig.scaleAndConcurrency.maximumInstanceCount", "100"), "not of type"),
        (_set(f"{SITE}:dependOn", []), "'dependOn' is not a property"),
        (_set(f"{SITE}:properties.siteConfig.appSettings", [{"nam": "X", "value": "1"}]), "'nam' is not a property"),
        (_set(f"{TOPIC}:properties.inputSchema", "CloudEvents"), "'CloudEvents' is not one of"),
        (_set(f"{TOPIC}:apiVersion", "2025-02-16"), "no local schema for Microsoft.EventGrid/topics@2025-02-16"),
        (_set(f"{COMPUTE}:properties.properties.scaleSettings.minNodeCont", 0), "'minNodeCont' is not a property"),
        (_set(f"{STORAGE}:name", "MyStorage"), "does not match"),
    ],
)
def test_a_wrong_key_or_value_fails_with_its_path(change: Any, expected: str) -> None:
    """The validator can fail: each mistake the schemas or the unknown-key pass must catch, caught."""
    template = copy.deepcopy(TEMPLATE)
    change(template)
    findings = [str(f) for f in validate_template(template)]
    assert any(expected in f for f in findings), findings


def test_a_role_assignment_without_its_principal_is_refused() -> None:
    template = copy.deepcopy(TEMPLATE)
    next(r for r in template["resources"] if r["type"].endswith("roleAssignments"))["properties"].pop("principalId")
    assert any("'principalId' is a required property" in str(f) for f in validate_template(template))


def test_every_setting_is_set_or_defaulted_and_each_name_is_one_ftpilot_reads() -> None:
    values = app_settings()
    fields = {f"FTPILOT_{name.upper()}": info for name, info in Settings.model_fields.items()}
    identity = {name for name in values if name.startswith("FTPILOT_STORAGE__")}
    unknown = {name for name in values if name.startswith("FTPILOT_")} - set(fields) - identity
    assert not unknown, f"app settings ftpilot does not read: {unknown}"
    for name, info in fields.items():
        assert name in values or not info.is_required(), name
    # What the azureml platform cannot do without, and no secret among the values.
    for needed in ("FTPILOT_PLATFORM", "FTPILOT_SUBSCRIPTION_ID", "FTPILOT_RESOURCE_GROUP", "FTPILOT_WORKSPACE_NAME"):
        assert needed in values
    assert values["FTPILOT_PLATFORM"] == "azureml"
    assert "FTPILOT_STORAGE" not in values, "the app connects to storage by identity, not with a connection string"
    for name, value in values.items():
        assert not re.search(r"listKeys|AccountKey|SharedAccessSignature|secret", value, re.IGNORECASE), name


def _placeholder(value: str) -> str:
    """An app setting as the app would read it: an expression becomes a value of the right shape."""
    if not value.startswith("["):
        return value
    if value.startswith("[string("):
        return "7"
    return "x"


def test_the_settings_the_template_writes_load_as_identity_based_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    values = app_settings()
    values["FTPILOT_STORAGE__blobServiceUri"] = "https://acct.blob.core.windows.net/"
    values["FTPILOT_STORAGE__queueServiceUri"] = "https://acct.queue.core.windows.net/"
    values["FTPILOT_STORAGE__tableServiceUri"] = "https://acct.table.core.windows.net/"
    values["FTPILOT_EVENTS_TOPIC_ENDPOINT"] = "https://topic.westeurope-1.eventgrid.azure.net/api/events"
    for name, value in values.items():
        monkeypatch.setenv(name, _placeholder(value))
    settings = Settings()
    assert settings.platform == "azureml"
    account = settings.storage_account
    assert account.connection_string is None
    assert account.blob_url == "https://acct.blob.core.windows.net/"
    assert account.table_url == "https://acct.table.core.windows.net/"


def test_roles_are_the_built_in_ones_named_and_least_privilege() -> None:
    roles = TEMPLATE["variables"]["roles"]
    assert roles == {name: BUILT_IN_ROLES[name] for name in roles}
    assignments = [r for r in TEMPLATE["resources"] if r["type"] == "Microsoft.Authorization/roleAssignments"]
    used = set()
    for assignment in assignments:
        (name,) = re.findall(r"variables\('roles'\)\['([^']+)'\]", assignment["properties"]["roleDefinitionId"])
        assert assignment["properties"]["description"] == f"ftpilot: {name}"
        assert assignment["properties"]["principalType"] == "ServicePrincipal"
        used.add(name)
    assert used == set(roles), "every role the template names is assigned, and nothing else"
    assert not BROAD_ROLES & set(roles.values())


def test_no_output_carries_a_secret() -> None:
    for name, output in TEMPLATE["outputs"].items():
        assert not re.search(r"list\w*\(|ConnectionString|key", output["value"], re.IGNORECASE), name
        assert output["type"] == "string", name


def test_storage_takes_no_shared_keys_and_the_cluster_idles_at_zero_nodes() -> None:
    account = resource(STORAGE)
    assert account["properties"]["allowSharedKeyAccess"] is False
    scale = resource(COMPUTE)["properties"]["properties"]["scaleSettings"]
    assert scale["minNodeCount"] == 0


def test_the_template_matches_the_app_it_deploys() -> None:
    """Names the template, the hook and the app must agree on."""
    params = TEMPLATE["parameters"]
    defaults = Settings.model_fields
    assert params["intakeContainer"]["defaultValue"] == defaults["intake_container"].default
    assert params["intakePrefix"]["defaultValue"] == defaults["intake_prefix"].default
    variables = TEMPLATE["variables"]
    assert variables["runsTable"] == defaults["runs_table"].default
    assert variables["rolloutQueue"] == defaults["rollout_queue"].default
    assert variables["eventsQueue"] == defaults["events_queue"].default
    assert variables["datastoreName"] == defaults["datastore"].default
    queues = {r["name"] for r in TEMPLATE["resources"] if r["type"].endswith("queueServices/queues")}
    assert any("-poison" in q for q in queues), "the rollout worker's poison queue is created too"


def test_the_subscriptions_point_at_functions_that_exist(app_functions: dict) -> None:
    bindings = {name: f.get_bindings() for name, f in app_functions.items()}
    (intake,) = bindings[postdeploy.INTAKE_FUNCTION]
    assert intake.type == "blobTrigger" and intake.source == "EventGrid"
    (events,) = bindings[postdeploy.RUN_EVENTS_FUNCTION]
    assert events.type == "eventGridTrigger"
    assert set(postdeploy.RUN_EVENT_TYPES) == RUN_TYPES
    assert postdeploy.PIPELINE_RUN.lower() == PIPELINE_RUN


def test_main_bicep_maps_azd_parameters_onto_the_template() -> None:
    """No Bicep CLI here: the thin wrapper is checked for the names it passes and reads."""
    bicep = (INFRA / "main.bicep").read_text()
    declared = set(re.findall(r"^param (\w+) ", bicep, re.MULTILINE))
    (module,) = re.findall(r"module ftpilot '([^']+)' = \{(.*?)\n\}", bicep, re.DOTALL)
    assert (INFRA / module[0]).is_file()
    params_block = module[1].split("params: {", 1)[1]
    passed = dict(re.findall(r"^\s+(\w+): (\w+)$", params_block, re.MULTILINE))
    template_params = TEMPLATE["parameters"]
    assert set(passed) <= set(template_params)
    assert set(passed.values()) <= declared
    required = {name for name, p in template_params.items() if "defaultValue" not in p}
    assert required <= set(passed), "every parameter without a default is passed"
    outputs = re.findall(r"ftpilot\.outputs\.(\w+)", bicep)
    assert outputs and set(outputs) <= set(TEMPLATE["outputs"])
    assert set(postdeploy.REQUIRED) - {"AZURE_SUBSCRIPTION_ID"} <= set(
        re.findall(r"^output (\w+) ", bicep, re.MULTILINE)
    )
    parameters = load(INFRA / "main.parameters.json")
    assert validate_parameters(parameters) == []
    assert set(parameters["parameters"]) <= declared


def test_azure_yaml_deploys_this_folder_and_runs_the_hook() -> None:
    spec = yaml.safe_load((REPO / "azure.yaml").read_text())
    (name, service), *_ = spec["services"].items()
    assert service == {"project": ".", "language": "python", "host": "function"}
    assert TEMPLATE["parameters"]["azdServiceName"]["defaultValue"] == name
    assert spec["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    for shell in spec["hooks"]["postdeploy"].values():
        assert (REPO / shell["run"]).is_file()
    ignored = (REPO / ".funcignore").read_text().split()
    assert {"tests", ".venv", "infra"} <= set(ignored)


# ---- the post-deploy hook, through a recording transport ----

SUB, RG, APP = "00000000-0000-0000-0000-000000000001", "rg-ftpilot", "ftpilot-abc"
SITE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Web/sites/{APP}"
KEY = "c2VjcmV0LWJsb2Itc3lzdGVtLWtleQ=="
ENV = {
    "AZURE_SUBSCRIPTION_ID": SUB,
    "AZURE_RESOURCE_GROUP": RG,
    "AZURE_FUNCTION_APP_NAME": APP,
    "FTPILOT_STORAGE_TOPIC": "ftpilot-storage-events",
    "FTPILOT_WORKSPACE_TOPIC": "ftpilot-run-events",
    "FTPILOT_INTAKE_CONTAINER": "datasets",
    "FTPILOT_INTAKE_PREFIX": "incoming/",
}


class Credential:
    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        assert scopes == ("https://management.azure.com/.default",)
        return AccessToken("token", 2**31)


class ARM:
    """Answers the hook's requests as ARM does, behind the SDK's own transport (tests/azure_wire).

    Shapes from the REST specs: listkeys returns systemKeys; a subscription PUT answers 201 with
    provisioningState Creating and an Azure-AsyncOperation to poll, which reports Succeeded.
    """

    def __init__(self, keys: list[dict[str, str]], functions: list[str]) -> None:
        self.keys = keys
        self.functions = functions
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.wire = WireRecorder(self)  # type: ignore[arg-type]

    def handle(self, sent: Sent) -> tuple[int, dict[str, str], Any]:
        path = sent.path
        assert sent.headers["Authorization"] == "Bearer token"
        assert "api-version=" in sent.url
        if sent.method == "GET" and path == SITE_ID:
            return 200, {}, {"id": SITE_ID, "name": APP, "properties": {"defaultHostName": f"{APP}.azurewebsites.net"}}
        if sent.method == "GET" and path == f"{SITE_ID}/functions":
            value = [{"id": f"{SITE_ID}/functions/{f}", "name": f"{APP}/{f}"} for f in self.functions]
            return 200, {}, {"value": value}
        if sent.method == "POST" and path == f"{SITE_ID}/host/default/listkeys":
            system = self.keys.pop(0) if len(self.keys) > 1 else self.keys[0]
            return 200, {}, {"masterKey": "m", "functionKeys": {}, "systemKeys": system}
        if "/eventSubscriptions/" in path and sent.method == "PUT":
            self.subscriptions[path] = sent.body
            operation = f"https://management.azure.com{path}/operations/1?api-version=2025-02-15"
            properties = {**sent.body["properties"], "provisioningState": "Creating"}
            return 201, {"Azure-AsyncOperation": operation}, {"id": path, "properties": properties}
        if path.endswith("/operations/1"):
            return 200, {}, {"status": "Succeeded"}
        if "/eventSubscriptions/" in path and sent.method == "GET":
            properties = {**self.subscriptions[path]["properties"], "provisioningState": "Succeeded"}
            return 200, {}, {"id": path, "properties": properties}
        return 404, {}, {"error": {"code": "NotFound", "message": path}}


def _hook(transport: ARM, env: dict[str, str] = ENV) -> tuple[list[str], list[float]]:
    said: list[str] = []
    slept: list[float] = []
    postdeploy.run(
        env, credential=Credential(), sleep=slept.append, say=said.append, transport=transport.wire.transport()
    )
    return said, slept


def test_the_hook_subscribes_both_functions_and_never_prints_the_key() -> None:
    transport = ARM([{"blobs_extension": KEY}], ["intake", "run_events", "rollout"])
    said, _ = _hook(transport)
    base = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.EventGrid/systemTopics"
    intake = transport.subscriptions[f"{base}/ftpilot-storage-events/eventSubscriptions/ftpilot-intake"]
    run_events = transport.subscriptions[f"{base}/ftpilot-run-events/eventSubscriptions/ftpilot-run-events"]

    webhook = intake["properties"]["destination"]
    assert webhook["endpointType"] == "WebHook"
    assert webhook["properties"]["endpointUrl"] == (
        f"https://{APP}.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.intake&code={KEY}"
    )
    assert (
        intake["properties"]["filter"]["subjectBeginsWith"]
        == "/blobServices/default/containers/datasets/blobs/incoming/"
    )
    assert intake["properties"]["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    function = run_events["properties"]["destination"]
    assert function == {
        "endpointType": "AzureFunction",
        "properties": {
            "resourceId": f"{SITE_ID}/functions/run_events",
            "maxEventsPerBatch": 1,
            "preferredBatchSizeInKilobytes": 64,
        },
    }
    assert run_events["properties"]["filter"]["advancedFilters"] == [
        {"operatorType": "StringIn", "key": "data.runType", "values": ["azureml.PipelineRun"]}
    ]
    assert KEY not in "\n".join(said)
    assert all(KEY not in r.url for r in transport.wire.sent), "the key travels in a body, never in a URL"

    # Each body is what the template schema says an event subscription is.
    findings: list[Finding] = []
    for topic, body in ((ENV["FTPILOT_STORAGE_TOPIC"], intake), (ENV["FTPILOT_WORKSPACE_TOPIC"], run_events)):
        findings += validate_template(
            {
                "$schema": TEMPLATE["$schema"],
                "contentVersion": "1.0.0.0",
                "resources": [
                    {
                        "type": "Microsoft.EventGrid/systemTopics/eventSubscriptions",
                        "apiVersion": "2025-02-15",
                        "name": f"{topic}/s",
                        "properties": body["properties"],
                    }
                ],
            }
        )
    assert findings == []


def test_the_hook_is_idempotent() -> None:
    transport = ARM([{"blobs_extension": KEY}], ["intake", "run_events"])
    _hook(transport)
    first = [(r.method, r.url, r.body) for r in transport.wire.sent]
    transport.wire.sent.clear()
    _hook(transport)
    assert [(r.method, r.url, r.body) for r in transport.wire.sent] == first
    assert len(transport.subscriptions) == 2


def test_the_hook_waits_for_the_blob_key_then_says_what_to_do() -> None:
    transport = ARM([{}, {}, {"blobs_extension": KEY}], ["intake", "run_events"])
    _, slept = _hook(transport)
    assert slept == list(postdeploy.KEY_WAIT_S[:2])

    never = ARM([{}], ["intake", "run_events"])
    with pytest.raises(postdeploy.HookError, match="no blobs_extension system key yet"):
        _hook(never)
    assert not never.subscriptions


def test_the_hook_refuses_before_the_code_is_deployed_or_without_its_settings() -> None:
    transport = ARM([{"blobs_extension": KEY}], ["intake"])
    with pytest.raises(postdeploy.HookError, match="does not have run_events deployed"):
        _hook(transport)
    assert not transport.subscriptions
    with pytest.raises(postdeploy.HookError, match="not set: FTPILOT_STORAGE_TOPIC"):
        _hook(transport, {k: v for k, v in ENV.items() if k != "FTPILOT_STORAGE_TOPIC"})


def test_the_hook_script_runs_the_module() -> None:
    script = (INFRA / "hooks" / "postdeploy.sh").read_text()
    assert "-m infra.postdeploy" in script and "infra/requirements.txt" in script
    assert Path(INFRA / "hooks" / "postdeploy.sh").stat().st_mode & 0o111


class _StorageService:
    """Answers as Blob, Queue and Table storage do to an authorised read; keeps who asked with what."""

    def __init__(self) -> None:
        self.wire = WireRecorder(self)  # type: ignore[arg-type]

    def handle(self, sent: Sent) -> tuple[int, dict[str, str], Any]:
        if sent.host.startswith("acct.table."):
            return 200, {}, {"value": []}
        return 200, {"x-ms-meta-seen": "1"}, None


def test_the_apps_storage_clients_connect_by_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the template's FTPILOT_STORAGE__* settings make of ftpilot's storage clients: bearer tokens, no key."""
    from shared import identity
    from shared.storage import Storage

    scopes: list[tuple[str, str | None]] = []

    class Token:
        def __init__(self, client_id: str | None) -> None:
            self.client_id = client_id

        def get_token(self, *wanted: str, **_: Any) -> AccessToken:
            scopes.append((wanted[0], self.client_id))
            return AccessToken("token", 2**31)

    monkeypatch.setattr(identity, "credential", Token)
    settings = Settings(storage_account_name="acct", storage_client_id="the-identity")
    service = _StorageService()
    storage = Storage(settings, transport=service.wire.transport())
    list(storage.table.query_entities("PartitionKey eq 'x'"))
    storage.queue.get_queue_properties()
    storage.container.get_container_properties()
    hosts = [sent.host for sent in service.wire.sent]
    assert hosts == ["acct.table.core.windows.net", "acct.queue.core.windows.net", "acct.blob.core.windows.net"]
    assert all(sent.headers["Authorization"] == "Bearer token" for sent in service.wire.sent)
    assert {scope for scope, _ in scopes} == {"https://storage.azure.com/.default"}
    assert {client for _, client in scopes} == {"the-identity"}
