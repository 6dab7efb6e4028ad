"""Offline validation of ARM templates against Azure's own template schemas.

The schemas are the official ones (``../shared/fixtures/arm``, read its ``SOURCES.md``): each
resource is checked against the definition its ``type`` and ``apiVersion`` select, the rest of
the template against the deployment-template schema, and then every key is checked against the
keys some matching schema declares, because almost none of the schemas forbid unknown keys and a
misspelt property must not pass. Nothing here goes to the network: an unmapped ``$ref`` fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft6Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT4

from tests.paths import FIXTURES

ARM = FIXTURES / "arm"
BASE = "https://schema.management.azure.com/schemas/"
TEMPLATE_SCHEMA = BASE + "2019-04-01/deploymentTemplate.json"
PARAMETERS_SCHEMA = BASE + "2019-04-01/deploymentParameters.json"
# SOURCES.md, gotcha 1: the HEAD regeneration of this file rejects every subtype-only property of
# computes and datastores; the previous generator's output has the same API surface and is right.
REPLACED = {
    "2026-05-01/Microsoft.MachineLearningServices.json": ARM
    / "alt/9fe96e4/schemas/2026-05-01/Microsoft.MachineLearningServices.json"
}
SECTIONS = ("resourceDefinitions", "unknown_resourceDefinitions", "subscription_resourceDefinitions")
EXPRESSION = re.compile(r"^\[([^\[].*)?\]$", re.DOTALL)
# Keys ARM itself reads on every resource, top-level or nested, whatever its type.
ENVELOPE = {
    "name",
    "type",
    "apiVersion",
    "condition",
    "dependsOn",
    "location",
    "tags",
    "copy",
    "scope",
    "comments",
    "properties",
    "resources",
}

Validator = validators.extend(Draft4Validator, {"const": Draft6Validator.VALIDATORS["const"]})


@dataclass(frozen=True)
class Finding:
    """One thing wrong, at a JSON path of the template."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _refuse(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)


@cache
def _schemas() -> tuple[Registry, dict[tuple[str, str], str]]:
    """Every local schema file in one registry, and which definition each (type, apiVersion) uses."""
    documents: dict[str, Any] = {}
    for path in sorted((ARM / "schemas").rglob("*.json")):
        relative = path.relative_to(ARM / "schemas").as_posix()
        documents[BASE + relative] = json.loads(REPLACED.get(relative, path).read_text(encoding="utf-8"))
    sendgrid = documents.get(BASE + "2015-01-01/Sendgrid.Email.json")
    if sendgrid is not None:  # its id names another path (SOURCES.md, gotcha 8)
        documents[sendgrid["id"].split("#")[0]] = sendgrid
    registry = Registry(retrieve=_refuse).with_resources(
        (url, DRAFT4.create_resource(document)) for url, document in documents.items()
    )
    index: dict[tuple[str, str], str] = {}
    for url, document in documents.items():
        for section in SECTIONS:
            for name, definition in document.get(section, {}).items():
                props = definition.get("properties", {})
                for kind in props.get("type", {}).get("enum", []):
                    for version in props.get("apiVersion", {}).get("enum", []):
                        index[(kind.lower(), version)] = f"{url}#/{section}/{name}"
    return registry, index


def _validator(schema: dict[str, Any]) -> Any:
    registry, _ = _schemas()
    return Validator(schema, registry=registry)


def _path(error: ValidationError, prefix: str) -> str:
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def _misses_discriminator(error: ValidationError) -> bool:
    """A branch that failed a one-value enum on a direct key describes another kind of object."""
    if error.validator in ("enum", "const") and len(error.absolute_path) <= 1:
        values = error.validator_value if error.validator == "enum" else [error.validator_value]
        return len(values) == 1
    return error.validator == "type" and not error.absolute_path


def _is_expression_branch(errors: list[ValidationError]) -> bool:
    """The branch that takes an ``[expression]`` instead of a value (common/definitions.json)."""
    return all(isinstance(e.schema, dict) and e.schema.get("pattern") == EXPRESSION.pattern for e in errors)


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    """The errors that say what is wrong: into oneOf/anyOf, past the branches that do not apply."""
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        yield error
        return
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    relevant = [
        errors
        for errors in branches.values()
        if not _is_expression_branch(errors) and not any(_misses_discriminator(e) for e in errors)
    ]
    if not relevant:
        if any(_is_expression_branch(errors) for errors in branches.values()) and len(branches) == 2:
            relevant = [errors for errors in branches.values() if not _is_expression_branch(errors)]
        else:
            yield error
            return
    for errors in relevant:
        for sub in errors:
            yield from _leaves(sub)


def _schema_findings(instance: Any, schema: dict[str, Any], prefix: str) -> list[Finding]:
    findings = []
    for error in _validator(schema).iter_errors(instance):
        for leaf in _leaves(error):
            findings.append(Finding(_path(leaf, prefix), leaf.message[:400]))
    return findings


def _resolve(schema: dict[str, Any], resolver: Any) -> tuple[dict[str, Any], Any]:
    while "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        schema, resolver = resolved.contents, resolved.resolver
    return schema, resolver


def _nodes(schema: dict[str, Any], resolver: Any, instance: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every schema node that applies to ``instance``: through $ref and allOf, the matching oneOf/anyOf branches."""
    schema, resolver = _resolve(schema, resolver)
    yield schema, resolver
    for member in schema.get("allOf", []):
        yield from _nodes(member, resolver, instance)
    for keyword in ("oneOf", "anyOf"):
        branches = schema.get(keyword)
        if not branches:
            continue
        resolved = [_resolve(branch, resolver) for branch in branches]
        if isinstance(instance, str) and EXPRESSION.match(instance):
            continue
        valid = [(s, r) for s, r in resolved if _valid(s, r, instance)]
        if not valid:
            valid = [(s, r) for s, r in resolved if _discriminators_match(s, instance)] or resolved
        for branch, branch_resolver in valid:
            yield from _nodes(branch, branch_resolver, instance)


def _valid(schema: dict[str, Any], resolver: Any, instance: Any) -> bool:
    registry, _ = _schemas()
    return Validator(schema, registry=registry, _resolver=resolver).is_valid(instance)


def _discriminators_match(schema: dict[str, Any], instance: Any) -> bool:
    if not isinstance(instance, dict):
        return schema.get("type") != "object"
    for key, sub in schema.get("properties", {}).items():
        enum = sub.get("enum")
        if enum and len(enum) == 1 and key in instance and instance[key] != enum[0]:
            return False
    return True


def _unknown_keys(instance: Any, roots: list[tuple[dict[str, Any], Any]], path: str) -> Iterator[Finding]:
    """Keys of ``instance`` that no applicable schema node declares, recursively."""
    if isinstance(instance, str) and EXPRESSION.match(instance):
        return
    nodes = [node for schema, resolver in roots for node in _nodes(schema, resolver, instance)]
    if isinstance(instance, dict):
        declared: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        extra: list[tuple[dict[str, Any], Any]] = []
        open_ended = False
        for node, resolver in nodes:
            for key, sub in node.get("properties", {}).items():
                declared.setdefault(key, []).append((sub, resolver))
            more = node.get("additionalProperties")
            if isinstance(more, dict):
                extra.append((more, resolver))
            if more is True or "patternProperties" in node:
                open_ended = True
        has_object_schema = any("properties" in node or "additionalProperties" in node for node, _ in nodes)
        for key, value in instance.items():
            where = f"{path}.{key}"
            if key in declared:
                yield from _unknown_keys(value, declared[key], where)
            elif extra:
                yield from _unknown_keys(value, extra, where)
            elif has_object_schema and not open_ended:
                yield Finding(where, f"{key!r} is not a property any schema for this object declares")
    elif isinstance(instance, list):
        items = [(node["items"], resolver) for node, resolver in nodes if isinstance(node.get("items"), dict)]
        if items:
            for i, value in enumerate(instance):
                yield from _unknown_keys(value, items, f"{path}[{i}]")


def validate_template(template: dict[str, Any]) -> list[Finding]:
    """Everything wrong with ``template`` that the schemas can tell, each finding with its path."""
    registry, index = _schemas()
    findings = _schema_findings(
        {**template, "resources": []}, {"$ref": TEMPLATE_SCHEMA}, "$"
    )  # the envelope: parameters, variables, outputs
    resources = template.get("resources", [])
    if not isinstance(resources, list):
        return [*findings, Finding("$.resources", "ftpilot's templates list their resources (no symbolic names)")]
    base = {"$ref": TEMPLATE_SCHEMA + "#/definitions/resourceBase"}
    for i, resource in enumerate(resources):
        where = f"$.resources[{i}]"
        kind, version = str(resource.get("type", "")), str(resource.get("apiVersion", ""))
        definition = index.get((kind.lower(), version))
        if definition is None:
            findings.append(Finding(where, f"no local schema for {kind}@{version}"))
            continue
        schema = {"allOf": [base, {"$ref": definition}]}
        findings += _schema_findings(resource, schema, where)
        findings += list(_unknown_keys(resource, [(schema, registry.resolver())], where))
    return findings


def validate_parameters(parameters: dict[str, Any]) -> list[Finding]:
    """A deployment parameters file against its schema."""
    return _schema_findings(parameters, {"$ref": PARAMETERS_SCHEMA}, "$")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
