"""The walkthrough's compute check, done before anything is submitted.

A pipeline on the wrong cluster fails only after model import and preprocessing have run (and
billed). So, as the walkthrough does, the cluster must exist and not be in a failed state, its VM
size must be one the base model allows (the model's ``finetune_compute_allow_list`` tag) or, when
the model has no list, not one of the K80 sizes fine-tuning cannot use; and its GPUs per node come
from the workspace's VM size list, because the pipeline must be told how many to use.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.platform.azureml.service import get_or_none, text_of
from shared.platform.port import PlatformConfigError

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

ALLOW_LIST_TAG = "finetune_compute_allow_list"
INFERENCE_ALLOW_LIST_TAG = "inference_compute_allow_list"
# K80 sizes: the walkthrough rejects them when a model carries no allow list.
UNSUPPORTED_SIZES = frozenset({"standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r"})
_FIX = "set FTPILOT_COMPUTE_CLUSTER to a GPU cluster that fits"


def gpus_per_node(ml_client: MLClient, cluster: str, model_tags: Mapping[str, str]) -> int:
    """Check ``cluster`` for fine-tuning the model with ``model_tags``; return its GPUs per node."""
    compute = get_or_none(ml_client.compute.get, cluster)
    if compute is None:
        raise PlatformConfigError(
            f"compute cluster {cluster!r} does not exist in workspace {ml_client.workspace_name!r}: create it or {_FIX}"
        )
    if (text_of(compute.provisioning_state) or "").lower() == "failed":  # the SDK reads it as an enum
        raise PlatformConfigError(
            f"compute cluster {cluster!r} is in provisioning state Failed "
            f"({compute.provisioning_errors or 'no error recorded'}): recreate it or {_FIX}"
        )
    size = compute.size
    if not size:
        raise PlatformConfigError(f"compute {cluster!r} has no VM size (is it a compute cluster?); {_FIX}")
    allowed = allow_list(model_tags)
    if allowed is not None:
        if size.lower() not in {name.lower() for name in allowed}:
            raise PlatformConfigError(
                f"compute cluster {cluster!r} has VM size {size}, which the base model does not allow for "
                f"fine-tuning; allowed sizes: {', '.join(allowed)}; {_FIX}"
            )
    elif size.lower() in UNSUPPORTED_SIZES:
        raise PlatformConfigError(
            f"compute cluster {cluster!r} has VM size {size} (K80 GPUs), which fine-tuning does not support; {_FIX}"
        )
    return _gpus_of(ml_client, cluster, size)


def check_inference_size(instance_type: str, model: str, model_tags: Mapping[str, str]) -> None:
    """Refuse an instance type the base model's ``inference_compute_allow_list`` tag leaves out.

    A deployment on such a size provisions for many minutes and then fails (or never loads the
    model), billing all the while; the tag is the registry's own statement of what works.
    """
    allowed = allow_list(model_tags, INFERENCE_ALLOW_LIST_TAG)
    if allowed is not None and instance_type.lower() not in {size.lower() for size in allowed}:
        raise PlatformConfigError(
            f"instance type {instance_type} cannot serve {model} (its {INFERENCE_ALLOW_LIST_TAG} tag allows "
            f"{', '.join(allowed)}); set FTPILOT_INFERENCE_INSTANCE_TYPE to one of them"
        )


def allow_list(model_tags: Mapping[str, str], tag: str = ALLOW_LIST_TAG) -> list[str] | None:
    """The VM sizes the model's allow-list ``tag`` names, or None when it does not restrict them."""
    raw = model_tags.get(tag)
    if raw is None:
        return None
    try:
        sizes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        sizes = None
    if not isinstance(sizes, list | tuple) or not all(isinstance(size, str) for size in sizes):
        raise PlatformConfigError(
            f"the base model's {tag} tag is not a list of VM sizes ({raw!r}); "
            "choose another FTPILOT_BASE_MODEL or report it to the registry's owners"
        )
    return list(sizes)


def _gpus_of(ml_client: MLClient, cluster: str, size: str) -> int:
    """GPUs per node of ``size``, from the VM sizes offered in the workspace's region."""
    offered = list(ml_client.compute.list_sizes())
    for vm_size in offered:
        if (vm_size.name or "").lower() == size.lower():
            if not vm_size.gpus:
                raise PlatformConfigError(f"compute cluster {cluster!r} has VM size {size}, which has no GPU; {_FIX}")
            return int(vm_size.gpus)
    gpu_sizes = ", ".join(sorted(vm_size.name for vm_size in offered if vm_size.name and vm_size.gpus)) or "none"
    raise PlatformConfigError(
        f"VM size {size} of compute cluster {cluster!r} is not among the workspace region's VM sizes, so its "
        f"GPUs per node are unknown (GPU sizes offered: {gpu_sizes}); {_FIX}"
    )
