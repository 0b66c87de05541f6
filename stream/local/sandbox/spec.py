"""The vendored OpenAPI slices, loaded once: operations, rate limits and request validators.

OpenAPI 3.0 is not JSON Schema: `nullable: true` must become a `null` type, and Klaviyo
rejects fields its schema does not declare ("'x' is not a valid field for the resource"), so
every object that lists its `properties` is closed with `additionalProperties: false`.
Free-form objects (custom `properties`, `append`, …) stay open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

_RATE = re.compile(r"^(\d+)/([smd])$")
_DROP_KEYS = frozenset({"description", "example", "examples", "nullable", "default"})


@dataclass(frozen=True)
class RateLimit:
    """Burst (per second), steady (per minute) and, for a few endpoints, daily quotas."""

    burst: int
    steady: int
    daily: int | None = None


@dataclass(frozen=True)
class Operation:
    """One endpoint of one slice: where it lives and how its body is validated."""

    operation_id: str
    method: str
    path: str
    rate_limit: RateLimit
    client: bool
    validator: Draft202012Validator | None
    scopes: tuple[str, ...] = ()  # what a private key needs (`x-klaviyo-scopes`)


def _parse_rate(text: str, unit: str) -> int:
    """'350/s' → 350; the unit must be the one the window expects."""
    match = _RATE.match(text.strip())
    if not match or match.group(2) != unit:
        raise ValueError(f"unexpected x-klaviyo-ratelimit value {text!r}")
    return int(match.group(1))


def to_json_schema(node: Any) -> Any:
    """Convert an OpenAPI 3.0 schema fragment to JSON Schema 2020-12 (recursively)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key.startswith("x-"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable") is True:
        out = _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Let `schema` also accept null, the way OpenAPI 3.0 `nullable` means it."""
    kind = schema.get("type")
    if isinstance(kind, str) and not any(k in schema for k in ("$ref", "oneOf", "anyOf", "allOf")):
        schema = {**schema, "type": [kind, "null"]}
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        return schema
    return {"anyOf": [{"type": "null"}, schema]}


def _request_validator(doc: dict[str, Any], op: dict[str, Any]) -> Draft202012Validator | None:
    """A validator for the operation's JSON request body, or None if it takes no body."""
    body = op.get("requestBody")
    if not body:
        return None
    content = body.get("content", {})
    media = content.get("application/vnd.api+json") or content.get("application/json")
    if not media:
        return None
    components = to_json_schema(doc.get("components", {}))
    schema = {**to_json_schema(media["schema"]), "components": components}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def load_operations(openapi_dir: Path) -> dict[str, Operation]:
    """Every operation of every slice in `openapi_dir`, keyed by operationId."""
    operations: dict[str, Operation] = {}
    for file in sorted(Path(openapi_dir).glob("*.json")):
        doc = orjson.loads(file.read_bytes())
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "operationId" not in op:
                    continue
                limits = op.get("x-klaviyo-ratelimit", {"burst": "10/s", "steady": "150/m"})
                operations[op["operationId"]] = Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    path=path,
                    rate_limit=RateLimit(
                        burst=_parse_rate(limits["burst"], "s"),
                        steady=_parse_rate(limits["steady"], "m"),
                        daily=_parse_rate(limits["daily"], "d") if "daily" in limits else None,
                    ),
                    client=op.get("security", doc.get("security")) == [],
                    validator=_request_validator(doc, op),
                    scopes=tuple(op.get("x-klaviyo-scopes", ())),
                )
    return operations
