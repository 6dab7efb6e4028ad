"""The pure rules: merge order, display name, and coercion of values to declared input types."""

from __future__ import annotations

import re

import pytest

from shared.platform.azureml.parameters import InputSpec, coerce, resolve_parameters
from shared.platform.finetune import (
    SOURCE_MODEL,
    SOURCE_REQUEST,
    SOURCE_SETTINGS,
    SOURCE_WALKTHROUGH,
    WALKTHROUGH_DEFAULTS,
    display_name,
    merge_layers,
    parameter_layers,
)
from shared.platform.port import PlatformConfigError

SPECS = {
    spec.name: spec
    for spec in (
        InputSpec("num_train_epochs", "integer", minimum=1),
        InputSpec("per_device_train_batch_size", "integer", minimum=1),
        InputSpec("per_device_eval_batch_size", "integer", minimum=1),
        InputSpec("learning_rate", "number"),
        InputSpec("lr_scheduler_type", "string", enum=("linear", "cosine", "constant")),
        InputSpec("apply_lora", "string", enum=("true", "false")),
        InputSpec("apply_deepspeed", "string", enum=("true", "false")),
        InputSpec("deepspeed_stage", "string", enum=("2", "3")),
        InputSpec("shm_size_finetune", "string"),
        InputSpec("deepspeed", "uri_file"),
        InputSpec("compute_finetune", "string"),
    )
}


def test_layers_merge_in_order_and_remember_their_source() -> None:
    layers = parameter_layers(
        {"learning_rate": 1e-5, "lr_scheduler_type": "linear"},
        {"learning_rate": 2e-5, "num_train_epochs": 1},
        {"learning_rate": 3e-5},
    )
    merged = merge_layers(layers)

    assert [layer.source for layer in layers] == [SOURCE_WALKTHROUGH, SOURCE_MODEL, SOURCE_SETTINGS, SOURCE_REQUEST]
    assert (merged["learning_rate"].value, merged["learning_rate"].source) == (3e-5, SOURCE_REQUEST)
    assert (merged["num_train_epochs"].value, merged["num_train_epochs"].source) == (1, SOURCE_SETTINGS)
    assert (merged["lr_scheduler_type"].value, merged["lr_scheduler_type"].source) == ("linear", SOURCE_MODEL)
    assert merged["apply_lora"].source == SOURCE_WALKTHROUGH


def test_display_name_follows_the_walkthrough() -> None:
    name = display_name("Phi-3-mini-4k-instruct", "ultrachat", WALKTHROUGH_DEFAULTS, gpus_per_node=1)
    assert name == "Phi-3-mini-4k-instruct-ultrachat-1bs-cosine-ds2-lora--1savelimit--1seqlen"


def test_display_name_multiplies_the_effective_batch_and_reads_switches() -> None:
    parameters = {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "num_nodes_finetune": 2,
        "apply_deepspeed": "false",
        "apply_lora": "false",
        "save_total_limit": 3,
        "max_seq_length": 2048,
    }
    name = display_name("m", "d", parameters, gpus_per_node=8)
    assert name == "m-d-128bs-linear-nods-nolora-3savelimit-2048seqlen"


def test_display_name_is_sanitised() -> None:
    name = display_name("model", "my data / v2 (final)", {}, gpus_per_node=1)
    assert name == "model-my-data-v2-final-1bs-linear-nods-nolora--1savelimit--1seqlen"
    assert display_name("m", "Ünïcode", {}, 1).startswith("m-n-code-1bs-")
    assert len(display_name("m", "x" * 400, {}, 1)) == 255


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("num_train_epochs", 3, 3),
        ("num_train_epochs", "3", 3),
        ("num_train_epochs", 3.0, 3),
        ("learning_rate", 5e-6, 5e-6),
        ("learning_rate", "5e-6", 5e-6),
        ("learning_rate", 1, 1.0),
        ("lr_scheduler_type", "Cosine", "cosine"),
        ("apply_lora", True, "true"),
        ("apply_lora", "FALSE", "false"),
        ("deepspeed_stage", 3, "3"),
        ("shm_size_finetune", "16g", "16g"),
    ],
)
def test_values_are_coerced_to_the_declared_type(name: str, value: object, expected: object) -> None:
    coerced = coerce(SPECS[name], value)  # type: ignore[arg-type]
    assert coerced == expected
    assert type(coerced) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("num_train_epochs", 2.5, "must be an integer"),
        ("num_train_epochs", "three", "must be an integer"),
        ("num_train_epochs", True, "not a boolean"),
        ("num_train_epochs", 0, "below the minimum 1"),
        ("learning_rate", "fast", "must be a number"),
        ("learning_rate", float("nan"), "finite"),
        ("apply_lora", "yes", "use one of 'true', 'false' (switches are the strings \"true\"/\"false\")"),
        ("apply_lora", 1, "use one of 'true', 'false'"),
        ("lr_scheduler_type", "cosin", "did you mean 'cosine'?"),
        ("deepspeed_stage", 1, "use one of '2', '3'"),
    ],
)
def test_bad_values_say_what_is_allowed(name: str, value: object, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        coerce(SPECS[name], value)  # type: ignore[arg-type]


def test_resolution_reports_every_problem_with_its_source() -> None:
    layers = parameter_layers(
        {},
        {"num_train_epoch": 2, "compute_finetune": "other-cluster"},
        {"apply_lora": "yes", "deepspeed": "ds.json"},
    )
    with pytest.raises(PlatformConfigError) as caught:
        resolve_parameters(layers, SPECS, "chat_completion_pipeline 0.0.82")
    message = str(caught.value)

    assert "num_train_epoch (from FTPILOT_FINETUNE_PARAMETERS) is not an input of chat_completion_pipeline" in message
    assert "did you mean num_train_epochs?" in message
    assert (
        "compute_finetune (from FTPILOT_FINETUNE_PARAMETERS) is set by ftpilot from FTPILOT_COMPUTE_CLUSTER" in message
    )
    assert "apply_lora='yes' (from the request's parameters) is not allowed" in message
    assert "deepspeed (from the request's parameters) is a uri_file input" in message


def test_resolution_returns_typed_values() -> None:
    layers = parameter_layers({}, {"num_train_epochs": "1"}, {"apply_deepspeed": False})
    resolved = resolve_parameters(layers, SPECS, "pipeline")
    assert resolved["num_train_epochs"] == 1
    assert resolved["apply_deepspeed"] == "false"
    assert resolved["learning_rate"] == 5e-6
    assert isinstance(resolved["learning_rate"], float)
