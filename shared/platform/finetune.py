"""Fine-tuning choices every platform shares: the walkthrough's defaults, the merge order, the display name.

ftpilot follows Azure ML's foundation-models chat-completion walkthrough (the phi-3 notebook). Its
choices live here, free of any SDK, so the Azure ML adapter and the local workspace resolve the same
parameters and name runs the same way: a run found in either place reads alike.

Parameters come in layers, each overriding the one before: the walkthrough's defaults, the base
model's own defaults (Azure ML packs them in the model's ``model_specific_defaults`` tag), the
operator's ``FTPILOT_FINETUNE_PARAMETERS``, then the request's per-dataset parameters. Every resolved
value remembers which layer it came from, so an error about it can tell the operator what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from shared.platform.port import ParamValue

WALKTHROUGH_DEFAULTS: Mapping[str, ParamValue] = MappingProxyType(
    {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 1,
        "learning_rate": 5e-6,
        "lr_scheduler_type": "cosine",
        "apply_lora": "true",
        "apply_deepspeed": "true",
        "deepspeed_stage": "2",
    }
)

# Where each layer comes from, as an operator would look for it.
SOURCE_WALKTHROUGH = "ftpilot's walkthrough defaults"
SOURCE_MODEL = "the base model's model_specific_defaults tag"
SOURCE_SETTINGS = "FTPILOT_FINETUNE_PARAMETERS"
SOURCE_REQUEST = "the request's parameters"

# Display names keep to characters that survive URLs, CLI filters and the studio's search.
_DISPLAY_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DISPLAY_NAME_MAX = 255


@dataclass(frozen=True)
class ParameterLayer:
    """One source of parameters; ``source`` is how an error message points at it."""

    source: str
    values: Mapping[str, ParamValue]


@dataclass(frozen=True)
class ResolvedParameter:
    """A parameter's winning value and the layer it came from."""

    value: ParamValue
    source: str


def parameter_layers(
    model_defaults: Mapping[str, ParamValue],
    settings_parameters: Mapping[str, ParamValue],
    request_parameters: Mapping[str, ParamValue],
) -> list[ParameterLayer]:
    """The merge order, lowest precedence first: walkthrough, model, settings, request."""
    return [
        ParameterLayer(SOURCE_WALKTHROUGH, WALKTHROUGH_DEFAULTS),
        ParameterLayer(SOURCE_MODEL, model_defaults),
        ParameterLayer(SOURCE_SETTINGS, settings_parameters),
        ParameterLayer(SOURCE_REQUEST, request_parameters),
    ]


def merge_layers(layers: Sequence[ParameterLayer]) -> dict[str, ResolvedParameter]:
    """Overlay ``layers`` in order; a later layer's value wins and keeps its source."""
    merged: dict[str, ResolvedParameter] = {}
    for layer in layers:
        for name, value in layer.values.items():
            merged[name] = ResolvedParameter(value, layer.source)
    return merged


def is_enabled(value: ParamValue | None) -> bool:
    """Pipeline switches are the strings "true"/"false"; a Python ``True`` means the same."""
    return value is True or str(value).lower() == "true"


def display_name(model: str, dataset_label: str, parameters: Mapping[str, ParamValue], gpus_per_node: int) -> str:
    """The walkthrough's run name: what was trained, on what, and how, readable at a glance in a job list.

    The effective batch is per-device batch x gradient accumulation x GPUs per node x nodes; values the
    run does not set are the pipeline component's own defaults, which is what the run will use.
    """
    batch = (
        int(parameters.get("per_device_train_batch_size", 1))
        * int(parameters.get("gradient_accumulation_steps", 1))
        * gpus_per_node
        * int(parameters.get("num_nodes_finetune", 1))
    )
    scheduler = parameters.get("lr_scheduler_type", "linear")
    stage = parameters.get("deepspeed_stage", "2")
    deepspeed = f"ds{stage}" if is_enabled(parameters.get("apply_deepspeed")) else "nods"
    lora = "lora" if is_enabled(parameters.get("apply_lora")) else "nolora"
    save_limit = parameters.get("save_total_limit", -1)
    seq_len = parameters.get("max_seq_length", -1)
    label = _DISPLAY_NAME_UNSAFE.sub("-", dataset_label).strip("-")
    name = f"{model}-{label}-{batch}bs-{scheduler}-{deepspeed}-{lora}-{save_limit}savelimit-{seq_len}seqlen"
    return _DISPLAY_NAME_UNSAFE.sub("-", name)[:_DISPLAY_NAME_MAX]
