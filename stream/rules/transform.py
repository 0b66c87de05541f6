"""Transform stage: the user's declarative rules, then HIPAA redaction, applied to one call.

A transformations file (YAML or JSON, reviewed in git) lists transformations; each has an
optional `when` selector (type, and event exactly / by `pattern` glob / by `regex`) and rules
applied in order: rename, drop, set, copy, hash (SHA-256), map (values), to_trait (move a
property to a trait), and for profiles unset (remove a custom property from the Klaviyo
profile) and append (add values to a list property), which become the upsert's
`meta.patch_properties` like the per-call options of `integrations.Klaviyo`. Field paths start
with `properties.`, `traits.` or `context.`; `traits.` means the identify call's traits and the
`context.traits` of the other calls, where Segment puts them. The file is validated once at
start; an error names the file, rule and field.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from stream.core.calls import Call
from stream.core.errors import TransformConfigError
from stream.core.options import KlaviyoOptions
from stream.rules.configfile import load_document
from stream.rules.hipaa import HipaaPolicy, policy_from_settings
from stream.rules.route import Selector, selector_from

if TYPE_CHECKING:
    from stream.core.settings import Settings

ROOTS = ("properties", "traits", "context")
FieldPath = tuple[str, ...]  # (root, key, nested key, …)



# field access ---------------------------------------------------------------------------


def _root(call: Call, root: str, create: bool) -> dict[str, Any] | None:
    if root == "properties":
        return call.properties
    if root == "context":
        return call.context
    if call.type == "identify" or call.type == "delete":
        return call.traits
    traits = call.context.get("traits")
    if not isinstance(traits, dict):
        if not create:
            return None
        traits = call.context["traits"] = {}
    return traits


def _parent(call: Call, path: FieldPath, create: bool) -> dict[str, Any] | None:
    node = _root(call, path[0], create)
    for key in path[1:-1]:
        if node is None:
            return None
        child = node.get(key)
        if not isinstance(child, dict):
            if not create:
                return None
            child = node[key] = {}
        node = child
    return node


def get_field(call: Call, path: FieldPath) -> tuple[bool, Any]:
    """(found, value) of a field path."""
    parent = _parent(call, path, create=False)
    if parent is None or path[-1] not in parent:
        return False, None
    return True, parent[path[-1]]


def set_field(call: Call, path: FieldPath, value: Any) -> None:
    """Set a field path, creating the objects on the way."""
    parent = _parent(call, path, create=True)
    assert parent is not None
    parent[path[-1]] = value


def pop_field(call: Call, path: FieldPath) -> tuple[bool, Any]:
    """Remove a field path; (found, value)."""
    parent = _parent(call, path, create=False)
    if parent is None or path[-1] not in parent:
        return False, None
    return True, parent.pop(path[-1])


def sha256(value: Any) -> str:
    """Hex SHA-256 of a string as it is (other values: of their JSON)."""
    raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return hashlib.sha256(raw).hexdigest()


# rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One step: `kind` and its operands, already validated."""

    kind: str
    source: FieldPath
    target: FieldPath | None = None
    value: Any = None
    values: tuple[tuple[Any, Any], ...] = ()
    has_default: bool = False

    def apply(self, call: Call) -> None:
        """Change the call in place (the transformer works on a copy)."""
        if self.kind in ("unset", "append"):
            if call.type == "identify":  # profile patches: only an upsert carries them
                call.options = _patched(call, self.kind, self.source[1], self.value)
            return
        if self.kind == "set":
            set_field(call, self.source, copy.deepcopy(self.value))
            return
        if self.kind == "drop":
            pop_field(call, self.source)
            return
        if self.kind in ("rename", "to_trait"):
            found, value = pop_field(call, self.source)
        else:
            found, value = get_field(call, self.source)
        if not found:
            return
        if self.kind in ("rename", "to_trait", "copy"):
            assert self.target is not None
            set_field(call, self.target, copy.deepcopy(value))
        elif self.kind == "hash":
            if value is not None:
                set_field(call, self.target or self.source, sha256(value))
        elif self.kind == "map":
            for old, new in self.values:
                if value == old and type(value) is type(old):
                    set_field(call, self.source, new)
                    return
            if self.has_default:
                set_field(call, self.source, self.value)


def _patched(call: Call, kind: str, key: str, value: Any) -> KlaviyoOptions:
    """The call's options with one more profile patch; the later of unset/append on one key
    wins, and an unset property is not also set from the call's traits."""
    options = call.options
    unset = tuple(k for k in options.unset if k != key)
    append = {k: v for k, v in options.append.items() if k != key}
    if kind == "unset":
        call.traits.pop(key, None)
        return dataclasses.replace(options, unset=(*unset, key), append=append)
    earlier = options.append.get(key)
    values = [] if earlier is None else earlier if isinstance(earlier, list) else [earlier]
    added = value if isinstance(value, list) else [value]
    merged = [*values, *added]
    append[key] = merged[0] if len(merged) == 1 else merged
    return dataclasses.replace(options, unset=unset, append=append)


@dataclass(frozen=True, slots=True)
class Transformation:
    """Rules applied, in order, to the calls `when` selects."""

    when: Selector
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Transformer:
    """Applies the transformations, then the HIPAA policy; returns a new call when it changes."""

    transformations: tuple[Transformation, ...] = ()
    hipaa: HipaaPolicy | None = None

    def __call__(self, call: Call) -> Call:
        """The call as Klaviyo may see it."""
        matching = [t for t in self.transformations if t.when.matches(call)]
        if matching:
            call = dataclasses.replace(
                call,
                traits=copy.deepcopy(call.traits),
                properties=copy.deepcopy(call.properties),
                context=copy.deepcopy(call.context),
            )
            for transformation in matching:
                for rule in transformation.rules:
                    rule.apply(call)
        if self.hipaa is not None:
            call = self.hipaa.apply(call)
        return call


# loading --------------------------------------------------------------------------------

_OPERANDS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys) of the mapping form
    "rename": ({"from", "to"}, set()),
    "copy": ({"from", "to"}, set()),
    "set": ({"field", "value"}, set()),
    "map": ({"field", "values"}, {"default"}),
    "hash": ({"field"}, {"to"}),
    "drop": ({"field"}, set()),
    "to_trait": ({"property"}, {"trait"}),
    "unset": ({"field"}, set()),
    "append": ({"field", "value"}, set()),
}
_SHORT_FORM = {"drop": "field", "hash": "field", "to_trait": "property", "unset": "field"}
PROFILE_PATCHES = ("unset", "append")


def parse_path(raw: Any, where: str, name: str) -> FieldPath:
    """`properties.a.b` → ("properties", "a", "b"), or a `TransformConfigError` naming `name`."""
    if not isinstance(raw, str) or not raw:
        raise TransformConfigError(f"{where}: field '{name}': must be a field path string")
    parts = tuple(raw.split("."))
    if parts[0] not in ROOTS or len(parts) < 2 or not all(parts):
        raise TransformConfigError(
            f"{where}: field '{name}': {raw!r} must look like properties.<key>, traits.<key> "
            "or context.<key>"
        )
    return parts


def _rule(raw: Any, where: str) -> list[Rule]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise TransformConfigError(f"{where}: must be a mapping with one rule kind")
    kind, operands = next(iter(raw.items()))
    where = f"{where} ({kind})"
    if kind not in _OPERANDS:
        raise TransformConfigError(f"{where}: unknown rule kind; use one of {sorted(_OPERANDS)}")
    if kind in _SHORT_FORM and isinstance(operands, str | list):
        items = operands if isinstance(operands, list) else [operands]
        return [r for item in items for r in _rule({kind: {_SHORT_FORM[kind]: item}}, where)]
    if not isinstance(operands, dict):
        raise TransformConfigError(f"{where}: operands must be a mapping")
    required, optional = _OPERANDS[kind]
    missing = sorted(required - set(operands))
    if missing:
        raise TransformConfigError(f"{where}: field '{missing[0]}': required")
    extra = sorted(set(operands) - required - optional)
    if extra:
        raise TransformConfigError(f"{where}: field '{extra[0]}': not a field of {kind}")
    if kind in ("rename", "copy"):
        return [Rule(kind, parse_path(operands["from"], where, "from"),
                     parse_path(operands["to"], where, "to"))]  # fmt: skip
    if kind == "to_trait":
        key = operands["property"]
        trait = operands.get("trait", key)
        for name, value in (("property", key), ("trait", trait)):
            if not isinstance(value, str) or not value or "." in value:
                raise TransformConfigError(f"{where}: field '{name}': must be a top-level key")
        return [Rule(kind, ("properties", str(key)), ("traits", str(trait)))]
    path = parse_path(operands["field"], where, "field")
    if kind in PROFILE_PATCHES:
        return [_profile_patch(kind, path, operands.get("value"), where)]
    if kind == "set":
        return [Rule(kind, path, value=operands["value"])]
    if kind == "drop":
        return [Rule(kind, path)]
    if kind == "hash":
        target = parse_path(operands["to"], where, "to") if "to" in operands else None
        return [Rule(kind, path, target)]
    values = operands["values"]
    if not isinstance(values, dict) or not values:
        raise TransformConfigError(f"{where}: field 'values': must be a non-empty mapping")
    return [
        Rule(
            kind,
            path,
            value=operands.get("default"),
            values=tuple(values.items()),
            has_default="default" in operands,
        )
    ]


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _profile_patch(kind: str, path: FieldPath, value: Any, where: str) -> Rule:
    """unset / append: a top-level trait (a custom property of the Klaviyo profile)."""
    if path[0] != "traits" or len(path) != 2:
        raise TransformConfigError(
            f"{where}: field 'field': {kind} changes a profile property: use traits.<key>"
        )
    if kind == "append" and not (
        _scalar(value) or (isinstance(value, list) and value and all(map(_scalar, value)))
    ):
        raise TransformConfigError(
            f"{where}: field 'value': a string, number or boolean, or a list of them"
        )
    return Rule(kind, path, value=value)


def load_transformations(path: str | Path) -> tuple[Transformation, ...]:
    """Read and validate a transformations file (YAML or JSON), see examples/."""
    document = load_document(path, TransformConfigError)
    unknown = set(document) - {"transformations"}
    if unknown:
        raise TransformConfigError(f"{path}: unknown top-level field(s) {sorted(unknown)}")
    entries = document.get("transformations")
    if not isinstance(entries, list):
        raise TransformConfigError(f"{path}: field 'transformations': must be a list")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: transformations[{i}]"
        if not isinstance(entry, dict):
            raise TransformConfigError(f"{where}: must be a mapping")
        extra = set(entry) - {"name", "when", "rules"}
        if extra:
            raise TransformConfigError(f"{where}: unknown field(s) {sorted(extra)}")
        when = entry.get("when") or {}
        if not isinstance(when, dict):
            raise TransformConfigError(f"{where}: field 'when': must be a mapping")
        bad = set(when) - {"type", "event", "pattern", "regex"}
        if bad:
            raise TransformConfigError(f"{where}.when: unknown field(s) {sorted(bad)}")
        selector = selector_from(when, f"{where}.when", TransformConfigError)
        rules = entry.get("rules")
        if not isinstance(rules, list) or not rules:
            raise TransformConfigError(f"{where}: field 'rules': must be a non-empty list")
        parsed = [r for j, raw in enumerate(rules) for r in _rule(raw, f"{where}.rules[{j}]")]
        patches = sorted({r.kind for r in parsed if r.kind in PROFILE_PATCHES})
        if patches and selector.type not in (None, "identify"):
            raise TransformConfigError(
                f"{where}: rules {patches} patch profiles: select identify calls "
                "(when: {type: identify}) or none"
            )
        out.append(Transformation(selector, tuple(parsed)))
    return tuple(out)


def transformer_from_settings(settings: Settings) -> Transformer:
    """The transformer the settings describe: rules file, and the HIPAA policy when enabled."""
    transformations = (
        load_transformations(settings.transformations_file) if settings.transformations_file else ()
    )
    return Transformer(transformations, policy_from_settings(settings))
