"""Debezium change events → catalog resources, through a column mapping (`CATALOG_MAPPING_FILE`).

A products table streamed by Debezium needs no code: each mapped topic (one table) names the
resource kind, the column holding the id, and per Klaviyo field a column or a template:

    topics:
      shop.public.products:
        kind: item
        id: product_id
        fields:
          title: name
          description: body_html
          url: "https://shop.example/products/{handle}"   # {column} is replaced
          price: price
          published: active
          categories: category_ids                       # a list, or "a,b,c"
      shop.public.variants:
        kind: variant
        id: variant_id
        fields: {item_id: product_id, sku: sku, title: title, url: "https://shop.example/v/{sku}",
                 price: price, inventory_quantity: stock}

An envelope (`before`, `after`, `op`; JSON with or without Kafka Connect's `schema`/`payload`
wrapper, or Avro) becomes: `c` (insert), `u` (update), `r` (a snapshot read) → the row in
`after`; `d` → a deletion of the row in `before`; and the tombstone Debezium writes after a
delete (a null value) → a deletion of the id in its key. So each delete arrives twice, and
deleting what is already gone counts as done. Numbers written as strings (Debezium's
`decimal.handling.mode=string`) and booleans as 0/1 are converted; a decimal written as bytes
(`precise`, the default) is a dead letter asking for `double` or `string` mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from stream.catalog.records import FIELDS, Resource, parse
from stream.core.errors import CatalogConfigError, DecodeError, MappingError
from stream.klaviyo.catalog import KINDS, Kind
from stream.rules.configfile import load_document

OPS = {"c": "insert", "u": "update", "r": "snapshot read", "d": "delete"}
_TEMPLATE = re.compile(r"\{([^{}]+)\}")
_NUMBERS = {"price", "inventory_quantity"}
_BOOLEANS = {"published"}
_EXTRA = {"item": ("categories",), "variant": ("item_id", "inventory_policy"), "category": ()}


def is_envelope(body: dict[str, Any]) -> bool:
    """Whether a decoded value is a Debezium change event."""
    return "op" in body and ("after" in body or "before" in body)


@dataclass(frozen=True)
class Table:
    """The mapping of one topic: its resource kind, id column, and field → column/template."""

    kind: Kind
    id: str
    fields: dict[str, str]


class Mapping:
    """Every mapped topic of `CATALOG_MAPPING_FILE`."""

    def __init__(self, tables: dict[str, Table]) -> None:
        self.tables = tables

    def covers(self, topic: str) -> bool:
        return topic in self.tables

    def resource(
        self, topic: str, key: bytes | None, value: tuple[str | None, dict[str, Any]] | None
    ) -> Resource:
        """The resource version (or deletion) one change event of `topic` carries."""
        table = self.tables[topic]
        if value is None:  # the tombstone after a delete
            return Resource(table.kind, _key_id(key, table.id), None)
        body = value[1]
        if not is_envelope(body):
            raise DecodeError(f"not a Debezium change event (no op/before/after) on {topic}")
        op = body.get("op")
        if op == "d":
            before = body.get("before")
            if not isinstance(before, dict):
                return Resource(table.kind, _key_id(key, table.id), None)
            return Resource(table.kind, _id(before, table.id), None)
        if op not in OPS:
            raise DecodeError(f"Debezium op {str(op)[:10]!r} is not c, u, r or d")
        after = body.get("after")
        if not isinstance(after, dict):
            raise DecodeError(f"Debezium {OPS[op]} without an `after` row")
        row = {"id": _id(after, table.id)}
        for field, source in table.fields.items():
            row[field] = _convert(field, _column(after, source))
        return parse(row, table.kind)


def _column(row: dict[str, Any], source: str) -> Any:
    """A column's value, or a template with `{column}` parts filled in."""
    if "{" not in source:
        return row.get(source)

    def fill(match: re.Match[str]) -> str:
        found = row.get(match.group(1))
        if found is None:
            raise MappingError(f"column {match.group(1)!r} of template {source!r} is null")
        return str(found)

    return _TEMPLATE.sub(fill, source)


def _convert(field: str, value: Any) -> Any:
    """Debezium's encodings of numbers, booleans and lists, as the catalog fields expect them."""
    if value is None:
        return None
    if field in _NUMBERS or field == "inventory_policy":
        if isinstance(value, bytes | bytearray):
            raise MappingError(
                f"{field} is a decimal written as bytes: set Debezium's"
                " decimal.handling.mode to double or string"
            )
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise MappingError(
                    f"{field} is not a number ({value[:40]!r}): a decimal in Debezium's precise"
                    " mode? set decimal.handling.mode to double or string"
                ) from None
            return int(number) if field == "inventory_policy" else number
    if field in _BOOLEANS and isinstance(value, int) and not isinstance(value, bool):
        return bool(value)
    if field in ("categories", "images") and isinstance(value, str):
        if value.startswith("["):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                raise MappingError(f"{field} is not a JSON list") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    if field in ("categories", "item_id") and isinstance(value, int):
        return str(value)
    if field == "categories" and isinstance(value, list):
        return [str(v) for v in value]
    return value


def _id(row: dict[str, Any], column: str) -> str:
    found = row.get(column)
    if found is None or found == "":
        raise MappingError(f"the id column {column!r} is null or missing")
    return str(found)


def _key_id(key: bytes | None, column: str) -> str:
    """The id in a Debezium key: JSON `{"<column>": …}` (with or without `payload`), or the
    key itself."""
    if not key:
        raise DecodeError("a Debezium tombstone without a key: nothing says what was deleted")
    try:
        parsed = orjson.loads(key)
    except orjson.JSONDecodeError:
        return key.decode("utf-8", "replace")
    if isinstance(parsed, dict) and isinstance(parsed.get("payload"), dict):
        parsed = parsed["payload"]
    if isinstance(parsed, dict):
        return _id(parsed, column)
    return str(parsed)


def load_mapping(path: str | None) -> Mapping | None:
    """The mapping file, checked: every topic names a kind, an id column and known fields."""
    if not path:
        return None
    document = load_document(path, CatalogConfigError)
    topics = document.get("topics")
    if not isinstance(topics, dict) or not topics:
        raise CatalogConfigError(f"CATALOG_MAPPING_FILE {path}: expected `topics:` mapping")
    tables: dict[str, Table] = {}
    for topic, spec in topics.items():
        where = f"CATALOG_MAPPING_FILE {path}: topic {topic}"
        if not isinstance(spec, dict):
            raise CatalogConfigError(f"{where}: expected kind, id and fields")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise CatalogConfigError(f"{where}: kind must be item, variant or category")
        id_column = spec.get("id")
        fields = spec.get("fields") or {}
        if not isinstance(id_column, str) or not id_column:
            raise CatalogConfigError(f"{where}: id must name the id column")
        known = set(FIELDS[kind]) | set(_EXTRA[kind])
        if not isinstance(fields, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise CatalogConfigError(f"{where}: fields maps Klaviyo fields to columns")
        unknown = sorted(set(fields) - known)
        if unknown:
            raise CatalogConfigError(
                f"{where}: unknown field(s) {', '.join(unknown)} for a {kind}"
                f" (known: {', '.join(sorted(known))})"
            )
        tables[str(topic)] = Table(kind, id_column, dict(fields))
    return Mapping(tables)
