"""`produce --input` for catalog lines: `{"type": "catalog_item", "id": "…", …}` (or
`catalog_variant`, `catalog_category`, with the fields of `schemas/catalog_*.avsc`) becomes one
Avro record keyed `item:<id>` (`variant:`, `category:`), so that one resource's versions share a
partition and a compacted topic keeps its latest; `"deleted": true` publishes the tombstone (a
null value under that key). A line is checked as the catalog stage would read it: what the
service would dead-letter is refused here, by its line number.
"""

from __future__ import annotations

from typing import Any

import orjson

from stream.catalog.decode import CATALOG_NAMESPACE, catalog_schemas
from stream.catalog.records import TYPE_NAMES, parse
from stream.catalog.records import key_of as resource_key
from stream.intake.avro import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    encode_body,
    schemas_dir,
    single_object_fingerprint,
)

CATALOG_TYPES = ("catalog_item", "catalog_variant", "catalog_category")
RECORD_NAMES = {"catalog_item": "CatalogItem", "catalog_variant": "CatalogVariant",
                "catalog_category": "CatalogCategory"}  # fmt: skip


def is_catalog(line: dict[str, Any]) -> bool:
    """Whether a JSON line is a catalog record (not a call)."""
    return line.get("type") in CATALOG_TYPES


class CatalogEncoder:
    """Encodes catalog lines as `produce` writes calls: single-object Avro, or Confluent wire
    format with the schema registered under `<topic>-io.klaviyostream.catalog.<Record>`."""

    def __init__(self, registry: Any = None, topic: str = "") -> None:
        self._registry = registry
        self._topic = topic
        self._headers: dict[str, bytes] = {}

    def encode(self, line: dict[str, Any]) -> tuple[bytes, bytes | None]:
        """(key, value) of one catalog line; the value is None for a deletion (a tombstone).
        Raises `RecordError` for a line the catalog stage would refuse."""
        resource = parse(line, TYPE_NAMES[line["type"]])
        key = resource_key(resource.kind, resource.id)
        if resource.deleted:
            return key, None
        name = RECORD_NAMES[line["type"]]
        schema = catalog_schemas()[name]
        record: dict[str, Any] = {}
        for field in schema["fields"]:
            value = line.get(field["name"])
            if field["name"] == "custom_metadata" and isinstance(value, dict):
                value = orjson.dumps(value).decode()
            if value is None and "default" in field:
                value = field["default"]
            record[field["name"]] = value
        return key, self._header(name, schema) + encode_body(schema, record)

    def _header(self, name: str, schema: dict[str, Any]) -> bytes:
        header = self._headers.get(name)
        if header is None:
            if self._registry is None:
                header = SINGLE_OBJECT_MAGIC + single_object_fingerprint(schema)
            else:
                from confluent_kafka.schema_registry import Schema

                file = schemas_dir() / f"catalog_{name.removeprefix('Catalog').lower()}.avsc"
                subject = f"{self._topic}-{CATALOG_NAMESPACE}.{name}"
                raw = Schema(file.read_text(), "AVRO")
                schema_id = self._registry.register_schema(subject, raw)
                header = bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
            self._headers[name] = header
        return header
