"""Catalog record bytes → `Resource`: Avro (single-object with `schemas/catalog_*.avsc`, or
Confluent wire format through the Schema Registry), or a JSON object; Debezium change events
(JSON or Avro) through the column mapping of `CATALOG_MAPPING_FILE` (`stream.catalog.debezium`).

What cannot be read is a `DecodeError` naming why (the record becomes a dead letter); a
registry that does not answer raises `RegistryUnavailable` (the service waits and asks again).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fastavro import schemaless_reader
from fastavro.schema import parse_schema

from stream.catalog.debezium import Mapping, is_envelope
from stream.catalog.records import TYPE_NAMES, Resource, parse, tombstone
from stream.core.calls import Record
from stream.core.errors import DecodeError, RecordError, RegistryUnavailable
from stream.intake.avro import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    schemas_dir,
    single_object_fingerprint,
)
from stream.intake.decode import UNKNOWN_ID_SECONDS

CATALOG_NAMESPACE = "io.klaviyostream.catalog"


@cache
def catalog_schemas(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Record name (`CatalogItem`…) → parsed schema, from `schemas/catalog_*.avsc`."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((directory or schemas_dir()).glob("catalog_*.avsc")):
        schema: dict[str, Any] = parse_schema(json.loads(path.read_text()))  # type: ignore[assignment]
        out[str(schema["name"]).rsplit(".", 1)[-1]] = schema
    return out


class CatalogDecoder:
    """Reads catalog records in every format a product topic may hold."""

    def __init__(self, registry: Any = None, mapping: Mapping | None = None) -> None:
        self._registry = registry
        self._mapping = mapping
        self._local = {
            single_object_fingerprint(schema): (name, schema)
            for name, schema in catalog_schemas().items()
        }
        self._by_id: dict[int, dict[str, Any]] = {}
        self._missing: dict[int, float] = {}  # ids the registry does not know, until when

    async def prepare(self, records: Sequence[Record]) -> None:
        """Fetch the writer schemas of Confluent-framed records not known yet."""
        if self._registry is None:
            return
        wanted = {
            int.from_bytes(r.value[1:5], "big")
            for r in records
            if r.value and r.value[:1] == bytes([CONFLUENT_MAGIC]) and len(r.value) >= 5
        } - set(self._by_id)
        for schema_id in sorted(wanted):
            if self._missing.get(schema_id, 0) > time.monotonic():
                continue
            await asyncio.to_thread(self._fetch, schema_id)

    def _fetch(self, schema_id: int) -> None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:  # decode says so; asked again after a while
                self._missing[schema_id] = time.monotonic() + UNKNOWN_ID_SECONDS
                return
            raise RegistryUnavailable(f"Schema Registry answered {exc.http_status_code}") from None
        except Exception as exc:  # transport
            raise RegistryUnavailable(f"Schema Registry: {type(exc).__name__}") from None
        self._by_id[schema_id] = parse_schema(orjson.loads(registered.schema_str))  # type: ignore[assignment]

    def decode(self, record: Record) -> Resource:
        """One record → the resource version (or deletion) it carries."""
        value = record.value
        if self._mapping is not None and self._mapping.covers(record.topic):
            return self._mapping.resource(record.topic, record.key, self._value(value))
        if value is None:
            return tombstone(record.key)
        decoded = self._value(value)
        if decoded is None:
            return tombstone(record.key)
        name, body = decoded
        if is_envelope(body):
            raise DecodeError(
                f"a Debezium change event on {record.topic}, which CATALOG_MAPPING_FILE"
                " does not map"
            )
        return parse(body, TYPE_NAMES.get(name) if name else None)

    def _value(self, value: bytes | None) -> tuple[str | None, dict[str, Any]] | None:
        """(Avro record name or None, the value as a dict), None for a null value."""
        if value is None:
            return None
        if value[:2] == SINGLE_OBJECT_MAGIC:
            found = self._local.get(value[2:10])
            if found is None:
                raise DecodeError(
                    f"unknown catalog schema fingerprint {value[2:10][::-1].hex()}"
                )
            return found[0], _read(value, 10, found[1])
        if value[:1] == bytes([CONFLUENT_MAGIC]) and len(value) >= 5:
            if self._registry is None:
                raise DecodeError(
                    "record is in Confluent wire format but SCHEMA_REGISTRY_URL is not set"
                )
            schema_id = int.from_bytes(value[1:5], "big")
            if schema_id not in self._by_id and self._missing.get(schema_id, 0) < time.monotonic():
                self._fetch(schema_id)  # not prepared (a tool decoding one record): now
            schema = self._by_id.get(schema_id)
            if schema is None:
                raise DecodeError(f"unknown schema id {schema_id}")
            return str(schema.get("name", "")).rsplit(".", 1)[-1], _read(value, 5, schema)
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise DecodeError(
                "not a catalog record: neither Avro (c301 or 00 prefix) nor JSON"
            ) from None
        if body is None:
            return None
        if not isinstance(body, dict):
            raise DecodeError(f"a catalog record is a JSON object, not {type(body).__name__}")
        if isinstance(body.get("payload"), dict) and "schema" in body:
            body = body["payload"]  # Kafka Connect's JSON converter with schemas enabled
        return None, body


def _read(value: bytes, start: int, schema: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO(value)
    buf.seek(start)
    try:
        record = schemaless_reader(buf, schema, None)
    except Exception as exc:  # fastavro raises many types for corrupt input
        raise DecodeError(f"corrupt Avro body: {type(exc).__name__}") from None
    if buf.tell() != len(value) or not isinstance(record, dict):
        raise DecodeError("Avro body does not match its schema (trailing bytes)")
    return record


__all__ = ["CatalogDecoder", "RecordError", "catalog_schemas"]
