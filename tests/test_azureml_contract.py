"""Contract tests: what the adapter sends is what the real registry component and the SDK accept.

The component is loaded from its registry spec (chat_completion_pipeline 0.0.82, kept verbatim in
the fixtures) with the SDK's own ``load_component``, and the entities the adapter builds go through
the SDK's validation and REST serialisation, offline. The SDK checks input names but not values, so
these tests also pin ftpilot's own value checks to the spec.
"""

from __future__ import annotations

import pytest
from azure.ai.ml import Input

from shared.config import Settings
from shared.platform.azureml.parameters import RESERVED_INPUTS, input_specs, resolve_parameters
from shared.platform.azureml.submit import build_pipeline_job, datastore_uri, pipeline_inputs
from shared.platform.finetune import WALKTHROUGH_DEFAULTS, parameter_layers
from shared.platform.port import (
    DataRef,
    DeploymentRequest,
    EndpointRequest,
    FineTuneRequest,
    ModelRequest,
    PlatformConfigError,
)
from tests.azure_wire.component import spec_component
from tests.azure_wire.workspace import Wire

# azure-ai-ml's marshmallow-3 schemas warn about marshmallow 4 on every load: the SDK's to fix, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")

MODEL_ID = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
LABEL = "chat_completion_pipeline 0.0.82"


@pytest.fixture(scope="module")
def component():
    return spec_component()


@pytest.fixture(scope="module")
def specs(component):
    return input_specs(component)


def built_inputs(specs, parameters=None, gpus: int = 4) -> dict:
    settings = Settings(intake_container="datasets", datastore="ftpilot_datasets")
    resolved = resolve_parameters(parameter_layers({}, {}, parameters or {}), specs, LABEL)
    return pipeline_inputs(
        model_id=MODEL_ID,
        cluster="gpu-cluster-big",
        train_uri=datastore_uri(settings, DataRef("datasets", "prepared/run-1/train.jsonl")),
        test_uri=datastore_uri(settings, DataRef("datasets", "prepared/run-1/test.jsonl")),
        gpus_per_node=gpus,
        parameters=resolved,
    )


def assert_matches_declaration(spec, value) -> None:
    """``value`` is what the declared input type takes, as the pipeline reads it."""
    if spec.type == "string":
        assert isinstance(value, str), spec.name
        if spec.enum:
            assert value in spec.enum, spec.name
    elif spec.type == "integer":
        assert isinstance(value, int), spec.name
        assert not isinstance(value, bool), spec.name
    elif spec.type == "number":
        assert isinstance(value, int | float), spec.name
        assert not isinstance(value, bool), spec.name
    elif spec.type == "uri_file":
        assert isinstance(value, Input), spec.name
        assert value.type == "uri_file", spec.name
    else:
        assert spec.type == "mlflow_model", spec.name
        assert value == MODEL_ID


def test_the_spec_is_the_pinned_component(component, specs) -> None:
    assert (component.name, component.version) == ("chat_completion_pipeline", "0.0.82")
    assert len(specs) == 69
    assert set(RESERVED_INPUTS) <= set(specs)
    assert "mlflow_model_folder" in component.outputs


def test_every_input_passed_exists_with_the_declared_type(specs) -> None:
    inputs = built_inputs(specs)

    assert set(WALKTHROUGH_DEFAULTS) <= set(inputs)
    for name, value in inputs.items():
        assert name in specs, f"{name} is not an input of the component"
        assert_matches_declaration(specs[name], value)
    assert inputs["apply_lora"] == "true"
    assert inputs["apply_deepspeed"] == "true"
    assert inputs["deepspeed_stage"] == "2"
    assert inputs["learning_rate"] == 5e-6
    assert inputs["num_train_epochs"] == 3
    assert inputs["train_file_path"].path == "azureml://datastores/ftpilot_datasets/paths/prepared/run-1/train.jsonl"


def test_every_declared_default_passes_the_value_checks(specs, component) -> None:
    """Coercion accepts each settable input's own default, so no valid value is refused."""
    defaults = {
        name: component.inputs[name].default
        for name, spec in specs.items()
        if spec.settable and component.inputs[name].default is not None
    }
    inputs = built_inputs(specs, defaults)

    for name in defaults:
        assert_matches_declaration(specs[name], inputs[name])
    job = build_pipeline_job(component, inputs)
    assert job._validate().passed
    job._to_rest_object()


@pytest.mark.parametrize(
    ("parameters", "fragments"),
    [
        ({"apply_lora": "yes"}, ["apply_lora='yes'", "use one of 'true', 'false'"]),
        ({"deepspeed_stage": "1"}, ["deepspeed_stage='1'", "use one of '2', '3'"]),
        ({"lr_scheduler_type": "cosin"}, ["did you mean 'cosine'?"]),
        ({"num_train_epochs": "three"}, ["num_train_epochs='three'", "must be an integer"]),
        ({"num_train_epochs": 0}, ["below the minimum 1"]),
        ({"learning_rate": "fast"}, ["learning_rate='fast'", "must be a number"]),
        (
            {"num_train_epoch": 2},
            ["num_train_epoch", "not an input of chat_completion_pipeline 0.0.82", "num_train_epochs"],
        ),
        ({"train_file_path": "x.jsonl"}, ["train_file_path", "set by ftpilot"]),
        ({"deepspeed": "ds.json"}, ["deepspeed", "uri_file input"]),
    ],
)
def test_bad_parameters_are_refused_clearly(specs, parameters, fragments) -> None:
    with pytest.raises(PlatformConfigError) as caught:
        built_inputs(specs, parameters)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_the_pipeline_job_validates_and_serialises(specs, component) -> None:
    inputs = built_inputs(specs, {"num_train_epochs": 1, "apply_deepspeed": False}, gpus=8)
    job = build_pipeline_job(component, inputs)

    assert job._validate().passed
    rest = job._to_rest_object().as_dict()["properties"]
    node = rest["jobs"]["chat_completion_pipeline"]
    assert set(node["inputs"]) == set(inputs)
    assert node["inputs"]["mlflow_model_path"] == {"uri": MODEL_ID, "job_input_type": "mlflow_model"}
    assert node["inputs"]["number_of_gpu_to_use_finetuning"]["value"] == "8"
    assert node["inputs"]["apply_deepspeed"]["value"] == "false"
    assert node["inputs"]["compute_finetune"]["value"] == "gpu-cluster-big"
    assert node["inputs"]["test_file_path"]["job_input_type"] == "uri_file"
    assert node["outputs"]["mlflow_model_folder"]["value"] == "${{parent.outputs.trained_model}}"
    assert rest["settings"]["force_rerun"] is True
    assert rest["settings"]["continue_on_step_failure"] is False


def test_endpoint_deployment_and_model_serialise_to_rest() -> None:
    """What the adapter sends, as the real SDK serialises it onto the wire."""
    wire = Wire.start()
    platform = wire.platform()
    platform.begin_create_endpoint(EndpointRequest("ftpilot-chat", "chat models", {"team": "ml"}))
    wire.emulator.settle()
    platform.submit_finetune(
        FineTuneRequest(
            "ftpilot-job-1",
            "Phi-3-mini-4k-instruct",
            DataRef("datasets", "a/train.jsonl"),
            DataRef("datasets", "a/test.jsonl"),
            "d1",
        )
    )
    wire.emulator.set_job_status("ftpilot-job-1", "Completed")
    model = platform.register_model(ModelRequest("ftpilot-chat", "run-1", "ftpilot-job-1", "fine-tuned on d1"))
    platform.begin_create_deployment(
        DeploymentRequest(
            "ftpilot-chat", "blue-v3", f"azureml:ftpilot-chat:{model.version}", "Standard_NC24ads_A100_v4", 2
        )
    )
    sent = {(s.method, s.path.rsplit("/", 2)[-2]): s.body for s in wire.recorder.calls() if s.method == "PUT"}
    endpoint_rest = sent[("PUT", "onlineEndpoints")]
    assert endpoint_rest["properties"]["authMode"] == "Key"
    assert endpoint_rest["tags"] == {"team": "ml", "managed-by": "ftpilot"}
    deployment_rest = sent[("PUT", "deployments")]
    assert deployment_rest["properties"]["model"].endswith("/models/ftpilot-chat/versions/1")
    assert deployment_rest["properties"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert deployment_rest["properties"]["livenessProbe"]["initialDelay"] == "PT10M"
    assert deployment_rest["properties"]["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert deployment_rest["sku"]["capacity"] == 2
    model_rest = sent[("PUT", "versions")]["properties"]
    assert model_rest["modelType"] == "mlflow_model"
    assert model_rest["modelUri"] == "azureml://jobs/ftpilot-job-1/outputs/trained_model"
    assert model_rest["description"] == "fine-tuned on d1"
    wire.close()
