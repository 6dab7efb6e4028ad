"""Fine-tuning parameters, checked against the pipeline component the registry serves.

The SDK catches a misspelled input name but not a bad value: ``apply_lora="yes"``, a string for an
integer or an unknown scheduler all pass its validation and fail on the cluster, after the model
import has run. So every value is coerced and checked here against the loaded component's own input
declarations (``integer`` -> int, ``number`` -> float, ``string`` with an enum -> one of its
values; the pipeline's switches are the strings "true"/"false", and a Python bool becomes one).

The operator's layers (settings, request) and ftpilot's walkthrough defaults must name inputs the
component declares; a base model's ``model_specific_defaults`` tag is registry data that may speak
of other component versions, so names it has that this component lacks are dropped with a warning
(never passed: the SDK would reject the whole job). Every problem is reported at once, each with
the layer it came from, so one message says everything to fix.
"""

from __future__ import annotations

import ast
import difflib
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.platform.finetune import ParameterLayer, merge_layers
from shared.platform.port import ParamValue, PlatformConfigError

log = logging.getLogger(__name__)

MODEL_DEFAULTS_TAG = "model_specific_defaults"
# Inputs ftpilot fills itself; a parameter may not override them. Values say where they come from.
RESERVED_INPUTS: Mapping[str, str] = {
    "mlflow_model_path": "the base model (FTPILOT_BASE_MODEL)",
    "train_file_path": "the prepared train split",
    "test_file_path": "the prepared test split",
    "compute_model_import": "FTPILOT_COMPUTE_CLUSTER",
    "compute_preprocess": "FTPILOT_COMPUTE_CLUSTER",
    "compute_finetune": "FTPILOT_COMPUTE_CLUSTER",
    "compute_model_evaluation": "FTPILOT_COMPUTE_CLUSTER",
    "number_of_gpu_to_use_finetuning": "the GPUs per node of FTPILOT_COMPUTE_CLUSTER's VM size",
}
LITERAL_TYPES = frozenset({"string", "integer", "number"})
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class InputSpec:
    """What the component declares about one input."""

    name: str
    type: str
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def settable(self) -> bool:
        """Whether a fine-tuning parameter may set this input."""
        return self.type in LITERAL_TYPES and self.name not in RESERVED_INPUTS


def input_specs(component: Any) -> dict[str, InputSpec]:
    """The declared inputs of a loaded ``azure.ai.ml`` component, by name."""
    specs = {}
    for name, declared in component.inputs.items():
        enum = getattr(declared, "enum", None)
        specs[name] = InputSpec(
            name=name,
            type=str(declared.type),
            enum=tuple(str(value) for value in enum) if enum else None,
            minimum=getattr(declared, "min", None),
            maximum=getattr(declared, "max", None),
        )
    return specs


def model_defaults(model_tags: Mapping[str, str], specs: Mapping[str, InputSpec]) -> dict[str, ParamValue]:
    """The base model's ``model_specific_defaults`` the component can take (others dropped, logged)."""
    raw = model_tags.get(MODEL_DEFAULTS_TAG)
    if raw is None:
        return {}
    try:
        defaults = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        defaults = None
    if not isinstance(defaults, dict):
        raise PlatformConfigError(
            f"the base model's {MODEL_DEFAULTS_TAG} tag is not a dict ({raw!r}); "
            "choose another FTPILOT_BASE_MODEL or report it to the registry's owners"
        )
    usable = {str(name): value for name, value in defaults.items() if str(name) in specs and specs[str(name)].settable}
    dropped = sorted(set(map(str, defaults)) - set(usable))
    if dropped:
        log.warning("ignoring %s in the base model's %s: not inputs parameters may set", dropped, MODEL_DEFAULTS_TAG)
    return usable


def resolve_parameters(
    layers: list[ParameterLayer], specs: Mapping[str, InputSpec], component_label: str
) -> dict[str, ParamValue]:
    """Merge ``layers`` (later wins) and coerce each winning value to its input's declared type.

    Raises one ``PlatformConfigError`` listing every unknown name and bad value, each with its layer.
    """
    problems = []
    resolved: dict[str, ParamValue] = {}
    for name, chosen in merge_layers(layers).items():
        where = f"(from {chosen.source})"
        spec = specs.get(name)
        if spec is None:
            problems.append(f"{name} {where} is not an input of {component_label}{_suggest(name, specs)}")
        elif name in RESERVED_INPUTS:
            problems.append(f"{name} {where} is set by ftpilot from {RESERVED_INPUTS[name]}; remove it")
        elif spec.type not in LITERAL_TYPES:
            problems.append(f"{name} {where} is a {spec.type} input; parameters set only string and numeric inputs")
        else:
            try:
                resolved[name] = coerce(spec, chosen.value)
            except ValueError as exc:
                problems.append(f"{name}={chosen.value!r} {where} {exc}")
    if problems:
        raise PlatformConfigError(f"fine-tuning parameters rejected by {component_label}: " + "; ".join(problems))
    return resolved


def coerce(spec: InputSpec, value: ParamValue) -> ParamValue:
    """``value`` as the type ``spec`` declares; ValueError says what is allowed instead."""
    number: int | float
    if spec.type == "integer":
        number = _as_integer(value)
    elif spec.type == "number":
        number = _as_number(value)
    else:
        return _as_string(spec, value)
    if spec.minimum is not None and number < spec.minimum:
        raise ValueError(f"is below the minimum {spec.minimum:g}")
    if spec.maximum is not None and number > spec.maximum:
        raise ValueError(f"is above the maximum {spec.maximum:g}")
    return number


def _as_integer(value: ParamValue) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise ValueError("must be an integer")


def _as_number(value: ParamValue) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _as_string(spec: InputSpec, value: ParamValue) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if spec.enum is None:
        return text
    for allowed in spec.enum:
        if text.lower() == allowed.lower():
            return allowed
    hint = ' (switches are the strings "true"/"false")' if set(spec.enum) == {"true", "false"} else ""
    close = difflib.get_close_matches(text, spec.enum, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"is not allowed: use one of {', '.join(map(repr, spec.enum))}{hint}{suggestion}")


def _suggest(name: str, specs: Mapping[str, InputSpec]) -> str:
    settable = [spec.name for spec in specs.values() if spec.settable]
    close = difflib.get_close_matches(name, settable, n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""
