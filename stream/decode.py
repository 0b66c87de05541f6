"""Decode stage: Kafka record bytes → `Call`.

Two decoders with one method, `decode(value) -> Call`; both raise `DecodeError` with a reason a
person understands (wrong magic byte, unknown schema, truncated or corrupt body, missing field).
Schemaless fastavro reads keep the hot path lean; resolution against the current schema happens
only for records written with an older version.

With a Schema Registry, `prepare(values)` fetches the writer schemas a batch needs before any of
it is decoded, off the event loop. Only an id the registry says does not exist (404) makes a
dead letter; a registry that does not answer (transport error, 5xx) raises
`RegistryUnavailable` and the service waits and asks again; a refused credential (401/403) is a
`ConfigError`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from typing import Any, Protocol

from fastavro import schemaless_reader

from stream.avro import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, SchemaSet, WriterSchema, load_schemas
from stream.calls import CALL_TYPES, Call, normalize
from stream.errors import ConfigError, DecodeError, RegistryUnavailable

UNKNOWN_ID_SECONDS = 60.0  # an id the registry said does not exist is asked again after this


class Decoder(Protocol):
    """Turns one record value into a call."""

    async def prepare(self, values: Sequence[bytes | None]) -> None:
        """Fetch what decoding these values needs (writer schemas); may raise `Unavailable`."""
        ...

    def decode(self, value: bytes | None) -> Call: ...


def _read(value: bytes, start: int, schema: WriterSchema) -> Call:
    buf = io.BytesIO(value)
    buf.seek(start)
    try:
        record: Any = schemaless_reader(buf, schema.writer, schema.reader)
    except (EOFError, StopIteration):
        raise DecodeError("truncated Avro body") from None
    except Exception as exc:  # fastavro raises many types for corrupt input
        raise DecodeError(f"corrupt Avro body: {type(exc).__name__}: {exc}") from None
    if buf.tell() != len(value):
        raise DecodeError(
            f"Avro body has {len(value) - buf.tell()} trailing bytes: written with another schema?"
        )
    return normalize(schema.call_type, record)


def _require_bytes(value: bytes | None) -> bytes:
    if not value:
        raise DecodeError("empty record value (tombstone?)")
    return value


class LocalDecoder:
    """Avro single-object encoding with the schemas shipped in `schemas/`."""

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self._by_fp = (schemas or load_schemas()).by_fingerprint

    async def prepare(self, values: Sequence[bytes | None]) -> None:
        """Nothing to fetch: the schemas are local."""

    def decode(self, value: bytes | None) -> Call:
        value = _require_bytes(value)
        if value[:2] != SINGLE_OBJECT_MAGIC:
            if value[:1] == bytes([CONFLUENT_MAGIC]):
                raise DecodeError(
                    "record is in Confluent wire format but SCHEMA_REGISTRY_URL is not set"
                )
            raise DecodeError(f"wrong magic bytes {value[:2].hex()} (expected c301)")
        schema = self._by_fp.get(value[2:10])
        if schema is None:
            raise DecodeError(f"unknown schema fingerprint {value[2:10][::-1].hex()}")
        return _read(value, 10, schema)


class RegistryDecoder:
    """Confluent wire format; writer schemas fetched from the Schema Registry once per id."""

    def __init__(self, registry: Any, schemas: SchemaSet | None = None) -> None:
        self._registry = registry
        self._schemas = schemas or load_schemas()
        self._by_id: dict[int, WriterSchema] = {}
        self._unknown: dict[int, tuple[float, str]] = {}  # id -> (until, dead-letter reason)

    async def prepare(self, values: Sequence[bytes | None]) -> None:
        """Fetch the writer schemas of these values that are not known yet (in a thread)."""
        now = time.monotonic()
        wanted = set()
        for value in values:
            if value and len(value) >= 5 and value[0] == CONFLUENT_MAGIC:
                schema_id = int.from_bytes(value[1:5], "big")
                if schema_id not in self._by_id:
                    unknown = self._unknown.get(schema_id)
                    if unknown is None or unknown[0] < now:
                        wanted.add(schema_id)
        for schema_id in sorted(wanted):
            await asyncio.to_thread(self._fetch, schema_id)

    def _fetch(self, schema_id: int) -> None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            status = exc.http_status_code
            if status == 404:
                reason = f"unknown schema id {schema_id}: {exc}"
                self._unknown[schema_id] = (time.monotonic() + UNKNOWN_ID_SECONDS, reason)
                return
            if status in (401, 403):
                raise ConfigError(
                    f"SCHEMA_REGISTRY_URL: the registry refused our credentials ({status})"
                ) from None
            raise RegistryUnavailable(f"Schema Registry answered {status}") from None
        except Exception as exc:  # transport: refused, reset, timed out
            raise RegistryUnavailable(f"Schema Registry: {type(exc).__name__}") from None
        import orjson

        resolved = self._schemas.resolve(orjson.loads(registered.schema_str))
        if resolved is None:
            reason = f"schema id {schema_id} is not one of our calls ({'/'.join(CALL_TYPES)})"
            self._unknown[schema_id] = (time.monotonic() + UNKNOWN_ID_SECONDS, reason)
            return
        self._unknown.pop(schema_id, None)
        self._by_id[schema_id] = resolved

    def _writer(self, schema_id: int) -> WriterSchema:
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        unknown = self._unknown.get(schema_id)
        if unknown is not None:
            raise DecodeError(unknown[1])
        self._fetch(schema_id)  # not prepared (a tool decoding one record): fetch it now
        return self._writer(schema_id)

    def decode(self, value: bytes | None) -> Call:
        value = _require_bytes(value)
        if value[0] != CONFLUENT_MAGIC or len(value) < 5:
            raise DecodeError(f"wrong magic byte {value[:1].hex()} (expected 00, Confluent)")
        return _read(value, 5, self._writer(int.from_bytes(value[1:5], "big")))


def make_decoder(schema_registry_url: str | None) -> Decoder:
    """The decoder the settings ask for."""
    if not schema_registry_url:
        return LocalDecoder()
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return RegistryDecoder(SchemaRegistryClient({"url": schema_registry_url}))
