"""The registry's chat_completion_pipeline, loaded once from its spec (v0.0.82, kept verbatim in the fixtures)."""

from __future__ import annotations

from functools import cache
from typing import Any

from tests.paths import COMPONENT_SPEC


@cache
def spec_component() -> Any:
    """chat_completion_pipeline as its registry spec declares it (loading takes a second)."""
    from azure.ai.ml import load_component

    return load_component(COMPONENT_SPEC)
