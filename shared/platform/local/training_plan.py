"""The Azure pipeline's fine-tuning inputs, read as ``SFTConfig`` and ``LoraConfig`` arguments.

A local job gets the very parameters the Azure adapter would send (``shared.platform.finetune``'s
layers: walkthrough defaults < model defaults < settings < request) and honours those that mean
something on one machine, under the names and defaults of the ``chat_completion_pipeline`` component
(0.0.82): an input no layer sets takes the component's default, not Hugging Face's, so
``lora_alpha`` is 128 here as there. Values are checked with the Azure adapter's own ``coerce``, so
a value Azure would reject (``apply_lora="yes"``) is rejected at submission here too.

Inputs about the cluster (DeepSpeed, ORT, precision, instance types, node and GPU counts) have no
local meaning and are listed as ignored in the job's log and MLflow params. ``merge_lora_weights``
is ignored because the local deployment server serves a self-contained model, so LoRA weights are
always merged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.platform.azureml.parameters import InputSpec, coerce
from shared.platform.finetune import is_enabled
from shared.platform.port import ParamValue, PlatformConfigError

_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

# (pipeline input, declared type, component default, SFTConfig field, enum)
_SFT_INPUTS: tuple[tuple[str, str, ParamValue, str, tuple[str, ...] | None], ...] = (
    ("num_train_epochs", "integer", 1, "num_train_epochs", None),
    ("max_steps", "integer", -1, "max_steps", None),
    ("per_device_train_batch_size", "integer", 1, "per_device_train_batch_size", None),
    ("per_device_eval_batch_size", "integer", 1, "per_device_eval_batch_size", None),
    ("gradient_accumulation_steps", "integer", 1, "gradient_accumulation_steps", None),
    ("learning_rate", "number", 2e-5, "learning_rate", None),
    ("lr_scheduler_type", "string", "linear", "lr_scheduler_type", _SCHEDULERS),
    ("warmup_steps", "integer", 0, "warmup_steps", None),
    ("weight_decay", "number", 0.0, "weight_decay", None),
    ("adam_beta1", "number", 0.9, "adam_beta1", None),
    ("adam_beta2", "number", 0.999, "adam_beta2", None),
    ("adam_epsilon", "number", 1e-8, "adam_epsilon", None),
    ("max_grad_norm", "number", 1.0, "max_grad_norm", None),
    ("optim", "string", "adamw_torch", "optim", ("adamw_torch", "adafactor")),
    ("seed", "integer", 42, "seed", None),
    ("logging_steps", "integer", 10, "logging_steps", None),
    ("evaluation_strategy", "string", "epoch", "eval_strategy", ("epoch", "steps", "disable")),
    ("eval_steps", "integer", 500, "eval_steps", None),
)
_LORA_INPUTS: tuple[tuple[str, str, ParamValue, str], ...] = (
    ("lora_r", "integer", 8, "r"),
    ("lora_alpha", "integer", 128, "lora_alpha"),
    ("lora_dropout", "number", 0.0, "lora_dropout"),
)
_MINIMUM_ONE = {"num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size"}
_OTHER_INPUTS = {"apply_lora", "max_seq_length"}


@dataclass(frozen=True)
class TrainingPlan:
    """What the trainer does with a job's parameters."""

    sft: dict[str, Any]
    lora: dict[str, Any] | None
    max_seq_length: int | None  # None: the model's own maximum (the component's -1)
    ignored: list[str]


def plan(parameters: Mapping[str, ParamValue]) -> TrainingPlan:
    """Read resolved parameters; PlatformConfigError lists every value the trainer cannot use."""
    problems: list[str] = []

    def value(name: str, kind: str, default: ParamValue, enum: tuple[str, ...] | None = None) -> Any:
        spec = InputSpec(name, kind, enum, 1 if name in _MINIMUM_ONE else None)
        try:
            return coerce(spec, parameters.get(name, default))
        except ValueError as error:
            problems.append(f"{name}={parameters[name]!r} {error}")
            return default

    sft = {field: value(name, kind, default, enum) for name, kind, default, field, enum in _SFT_INPUTS}
    if sft["eval_strategy"] == "disable":
        sft["eval_strategy"] = "no"
    apply_lora = is_enabled(value("apply_lora", "string", "false", ("true", "false")))
    lora = {field: value(name, kind, default) for name, kind, default, field in _LORA_INPUTS}
    seq_length = value("max_seq_length", "integer", -1)
    if problems:
        raise PlatformConfigError("fine-tuning parameters the local trainer cannot use: " + "; ".join(problems))
    known = {entry[0] for entry in (*_SFT_INPUTS, *_LORA_INPUTS)} | _OTHER_INPUTS
    return TrainingPlan(
        sft=sft,
        lora=lora if apply_lora else None,
        max_seq_length=seq_length if seq_length > 0 else None,
        ignored=sorted(set(parameters) - known),
    )
