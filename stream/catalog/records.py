"""Catalog records → `Resource`: one version of one item, variant or category, or its deletion.

A record carries a whole resource (a compacted topic's row), in the fields of `schemas/
catalog_*.avsc` (Avro) or of a JSON object with `type` `catalog_item`, `catalog_variant` or
`catalog_category`. A null value (a Kafka tombstone) deletes the resource its key names:
`item:<id>`, `variant:<id>` or `category:<id>` — the key every record of a catalog topic should
carry, so that one resource's versions share a partition and compaction keeps its latest.
`{"type": "catalog_item", "id": "…", "deleted": true}` deletes too. Anything Klaviyo would
refuse for its shape (a missing title, a price that is not a number, an inventory policy other
than 0, 1 or 2, custom metadata over 100 KB) is a `MappingError`: a dead letter that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.core.errors import DecodeError, MappingError
from stream.klaviyo.catalog import Kind

MAX_ID = 255
MAX_METADATA_BYTES = 100 * 1024
TYPE_NAMES: dict[str, Kind] = {
    "catalog_item": "item", "catalog_variant": "variant", "catalog_category": "category",
    "CatalogItem": "item", "CatalogVariant": "variant", "CatalogCategory": "category",
}  # fmt: skip
KEY_KINDS: tuple[Kind, ...] = ("item", "variant", "category")

# field → (JSON types accepted, required on a whole resource); Klaviyo's attribute names
_COMMON = {
    "image_full_url": ((str,), False),
    "image_thumbnail_url": ((str,), False),
    "images": ((list,), False),
    "published": ((bool,), False),
    "custom_metadata": ((dict, str), False),
}
FIELDS: dict[Kind, dict[str, tuple[tuple[type, ...], bool]]] = {
    "item": {
        "title": ((str,), True),
        "description": ((str,), False),
        "url": ((str,), True),
        "price": ((int, float), False),
        **_COMMON,
    },
    "variant": {
        "sku": ((str,), True),
        "title": ((str,), True),
        "description": ((str,), False),
        "url": ((str,), True),
        "price": ((int, float), True),
        "inventory_quantity": ((int, float), True),
        "inventory_policy": ((int,), False),
        **_COMMON,
    },
    "category": {"name": ((str,), True)},
}
DEFAULTS: dict[str, Any] = {"description": "", "images": [], "published": True,
                            "custom_metadata": {}, "inventory_policy": 0}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Resource:
    """One version of a catalog resource: `fields` (Klaviyo's attribute names, every one of
    its kind present, null where the record has none), or None when it is deleted."""

    kind: Kind
    id: str
    fields: dict[str, Any] | None
    item_id: str | None = None  # a variant's item
    categories: tuple[str, ...] = ()  # an item's categories
    key: str = field(init=False, compare=False)  # `item:<id>`: the state store's key

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.kind}:{self.id}")

    @property
    def deleted(self) -> bool:
        return self.fields is None


def key_of(kind: Kind, resource_id: str) -> bytes:
    """The Kafka key of a resource's records: `item:SKU-1`."""
    return f"{kind}:{resource_id}".encode()


def from_key(key: bytes | None) -> tuple[Kind, str]:
    """(kind, id) of a record key `item:<id>` (a tombstone says no more)."""
    text = key.decode("utf-8", "replace") if key else ""
    kind, _, resource_id = text.partition(":")
    if kind not in KEY_KINDS or not resource_id:
        raise DecodeError(
            "a catalog tombstone's key must be item:<id>, variant:<id> or category:<id>"
            f" (got {text[:100]!r})"
        )
    return kind, resource_id  # type: ignore[return-value]


def tombstone(key: bytes | None) -> Resource:
    """The deletion a null value asks for."""
    kind, resource_id = from_key(key)
    return Resource(kind, _check_id(resource_id, "key"), None)


def parse(value: dict[str, Any], kind: Kind | None = None) -> Resource:
    """A decoded catalog record (Avro or JSON) → Resource; `kind` from the Avro record's name,
    else the JSON object's `type`."""
    if kind is None:
        named = value.get("type")
        kind = TYPE_NAMES.get(named) if isinstance(named, str) else None
        if kind is None:
            raise DecodeError(
                f"not a catalog record: type {str(named)[:60]!r} is not catalog_item, "
                "catalog_variant or catalog_category"
            )
    resource_id = _check_id(value.get("id"), "id")
    if value.get("deleted") is True:
        return Resource(kind, resource_id, None)
    fields: dict[str, Any] = {}
    for name, (types, required) in FIELDS[kind].items():
        found = value.get(name)
        if found is None:
            if required:
                raise MappingError(f"catalog {kind} {resource_id}: {name} is required")
            fields[name] = DEFAULTS.get(name)
            continue
        if not isinstance(found, types) or isinstance(found, bool) != (bool in types):
            raise MappingError(
                f"catalog {kind} {resource_id}: {name} must be "
                + " or ".join(_NAMES[t] for t in types)
            )
        fields[name] = found
    _check_fields(kind, resource_id, fields)
    item_id = categories = None
    if kind == "variant":
        item_id = _check_id(value.get("item_id"), "item_id")
    if kind == "item":
        raw = value.get("categories") or []
        if not isinstance(raw, list):
            raise MappingError(f"catalog item {resource_id}: categories must be a list of ids")
        categories = tuple(dict.fromkeys(_check_id(c, "categories") for c in raw))
    return Resource(kind, resource_id, fields, item_id, categories or ())


_NAMES = {str: "a string", int: "a number", float: "a number", bool: "true or false",
          list: "a list", dict: "a JSON object"}  # fmt: skip


def _check_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"catalog record: {name} must be a non-empty string")
    if len(value) > MAX_ID:
        raise MappingError(f"catalog record: {name} is longer than {MAX_ID} characters")
    return value


def _check_fields(kind: Kind, resource_id: str, fields: dict[str, Any]) -> None:
    """Klaviyo's rules beyond types: inventory policy, image lists, custom metadata."""
    where = f"catalog {kind} {resource_id}"
    policy = fields.get("inventory_policy")
    if kind == "variant" and policy not in (0, 1, 2):
        raise MappingError(f"{where}: inventory_policy must be 0, 1 or 2")
    images = fields.get("images")
    if images is not None and not all(isinstance(i, str) for i in images):
        raise MappingError(f"{where}: images must be a list of URLs")
    metadata = fields.get("custom_metadata")
    if isinstance(metadata, str):  # Avro carries it as JSON text
        try:
            metadata = orjson.loads(metadata) if metadata.strip() else {}
        except orjson.JSONDecodeError:
            raise MappingError(f"{where}: custom_metadata is not JSON") from None
        if not isinstance(metadata, dict):
            raise MappingError(f"{where}: custom_metadata must be a JSON object")
        fields["custom_metadata"] = metadata
    if metadata is not None and len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise MappingError(f"{where}: custom_metadata is larger than Klaviyo's 100 KB")
