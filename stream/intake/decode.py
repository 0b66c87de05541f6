"""Decode stage: Kafka record bytes → `Call`.

Two decoders with one method, `decode(value) -> Call`; both raise `DecodeError` with a reason a
person understands (wrong magic byte, unknown schema, truncated or corrupt body, missing field).
Schemaless fastavro reads keep the hot path lean; resolution against the current schema happens
only for records written with an older version.

With a Schema Registry, `prepare(records)` fetches the writer schemas a fetch needs before any of
it is decoded, off the event loop (its first call checks that the registry takes our
credentials: a wrong password stops `run` at start). What the registry's answers mean is
`stream.intake.registry.classify`'s: refused credentials (401/403) are a `ConfigError`; no
answer, 408, 429 or 5xx raise `RegistryUnavailable` and the service waits and asks again; any
other answer about one id (404 unknown, 400/422 a schema it will not serve) is a dead letter
for that id's records, naming what the registry said.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fastavro import schemaless_reader

from stream.core.calls import CALL_TYPES, Call, Record, normalize
from stream.core.errors import DecodeError
from stream.intake.avro import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    SchemaSet,
    WriterSchema,
    load_schemas,
)
from stream.intake.registry import auth_setting, classify, registry_client, said, status_of

if TYPE_CHECKING:
    from stream.core.settings import Settings

log = logging.getLogger(__name__)

VALUE_SCHEMA_ID_HEADER = "__value_schema_id"  # confluent-kafka's header for a schema GUID
UNKNOWN_ID_SECONDS = 60.0  # an id the registry said does not exist is asked again after this


Headers = list[tuple[str, str | bytes | None]] | None
_K = TypeVar("_K", bytes, int | str)
_P = TypeVar("_P")


class Decoder(Protocol):
    """Turns one record value (and its headers, which may carry the schema id) into a call."""

    async def prepare(self, records: Sequence[Record]) -> None:
        """Fetch what decoding these records needs (writer schemas); may raise `Unavailable`."""
        ...

    def decode(self, value: bytes | None, headers: Headers = None) -> Call: ...

    def peek(self, value: bytes | None, headers: Headers = None) -> Peeked | None:
        """What routing looks at, `(call type, event or name, integrations)`, read without
        decoding the rest of the record (its messageId and timestamp only checked non-empty);
        None when that cannot be done cheaply and surely: then `decode` it (which also says
        what is wrong with it)."""
        ...


Peeked = tuple[str, str | None, str | None]  # (call type, event or page/screen name, integrations)
PEEKABLE = frozenset({"identify", "track", "page", "screen"})  # alias and group are not routed
# what `peek` does with a field: skip it, check it is not empty, or read it
_SKIP, _NOT_EMPTY, _NAME, _INTEGRATIONS = -1, 0, 1, 2
_ROLES = {"messageId": _NOT_EMPTY, "timestamp": _NOT_EMPTY, "event": _NAME, "name": _NAME,
          "integrations": _INTEGRATIONS}  # fmt: skip
Plan = tuple[str, tuple[tuple[int, int], ...]]  # call type; per field: (role, union index)


def peek_plan(schema: WriterSchema) -> Plan | None:
    """How `peek` walks a record of `schema`: per field in writer order, its role and -1 for a
    string, or the zigzag-encoded index of the string branch of a null|string union. None when
    peeking could disagree with `decode`: an older writer schema (resolved against the current
    one), a call type that is not routed, a field of any other type, a routing field missing."""
    if schema.reader is not None or schema.call_type not in PEEKABLE:
        return None
    fields: list[tuple[int, int]] = []
    for field in schema.writer["fields"]:
        kind = field["type"]
        if kind == "string":
            branch = -1
        elif isinstance(kind, list) and len(kind) == 2 and set(kind) == {"null", "string"}:
            branch = 2 * kind.index("string")
        else:
            return None
        fields.append((_ROLES.get(field["name"], _SKIP), branch))
    roles = [role for role, _ in fields]
    if roles.count(_NOT_EMPTY) != 2 or roles.count(_INTEGRATIONS) != 1:
        return None
    if (schema.call_type == "identify") != (_NAME not in roles):
        return None
    return schema.call_type, tuple(fields)


def _varint_rest(value: bytes, pos: int, first: int) -> tuple[int, int]:
    """A zigzag varint whose first byte `first` had its continuation bit set: (raw, next pos).
    The one-byte case stays inline in the readers' loops."""
    n, shift = first & 0x7F, 7
    while True:
        byte = value[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, pos
        shift += 7


def _peek(value: bytes, pos: int, plan: Plan) -> Peeked | None:
    """Walk the Avro body by its varint lengths, reading only what routing needs."""
    call_type, fields = plan
    name: str | None = None
    integrations: str | None = None
    try:
        for role, branch in fields:
            if branch >= 0:
                index = value[pos]  # a union index: one zigzag byte, 0 or 2
                pos += 1
                if index != branch:
                    if index != 2 - branch or role == _NOT_EMPTY:
                        return None  # not a union index, or a required field is null
                    continue
            n = value[pos]
            pos += 1
            if n & 0x80:  # a length of 64 bytes or more: more varint bytes
                n, pos = _varint_rest(value, pos, n)
            if n & 1:
                return None  # a negative length
            length = n >> 1
            if role == _SKIP:
                pos += length
                continue
            end = pos + length
            if role == _NOT_EMPTY:
                if not length:
                    return None
            elif role == _NAME:
                name = value[pos:end].decode()
            else:
                integrations = value[pos:end].decode()
            pos = end
    except (IndexError, UnicodeDecodeError):
        return None
    if pos != len(value) or (call_type == "track" and not name):
        return None
    return call_type, name, integrations


Strings = tuple[tuple[str, int], ...]  # per field: (name, -1 or the string branch's zigzag index)


def strings_plan(schema: WriterSchema) -> Strings | None:
    """For a current-schema writer whose fields are all strings or null|string unions (ours
    are), the plan `_read_strings` follows; None for anything else (fastavro reads it)."""
    if schema.reader is not None:
        return None
    fields: list[tuple[str, int]] = []
    for field in schema.writer["fields"]:
        kind = field["type"]
        if kind == "string":
            fields.append((field["name"], -1))
        elif isinstance(kind, list) and len(kind) == 2 and set(kind) == {"null", "string"}:
            fields.append((field["name"], 2 * kind.index("string")))
        else:
            return None
    return tuple(fields)


def _read_strings(value: bytes, pos: int, plan: Strings) -> dict[str, Any] | None:
    """The record fastavro would read, for a schema of strings (about twice as fast); None
    when anything is off (fastavro then reads it again and names the fault)."""
    record: dict[str, Any] = {}
    try:
        for name, branch in plan:
            if branch >= 0:
                index = value[pos]
                pos += 1
                if index != branch:
                    if index != 2 - branch:
                        return None
                    record[name] = None
                    continue
            n = value[pos]
            pos += 1
            if n & 0x80:  # a length of 64 bytes or more: more varint bytes
                n, pos = _varint_rest(value, pos, n)
            if n & 1:
                return None
            end = pos + (n >> 1)
            if end > len(value):
                return None
            record[name] = value[pos:end].decode()
            pos = end
    except (IndexError, UnicodeDecodeError):
        return None
    return record if pos == len(value) else None


def _planned(
    schemas: dict[_K, WriterSchema], make: Callable[[WriterSchema], _P | None]
) -> dict[_K, _P]:
    """`make`'s plans of those schemas that have one (peek plans, string plans)."""
    return {key: plan for key, schema in schemas.items() if (plan := make(schema)) is not None}


def _read(value: bytes, start: int, schema: WriterSchema, plan: Strings | None = None) -> Call:
    if plan is not None:
        strings = _read_strings(value, start, plan)
        if strings is not None:
            return normalize(schema.call_type, strings)
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
        self._plans = _planned(self._by_fp, peek_plan)
        self._strings = _planned(self._by_fp, strings_plan)

    async def prepare(self, records: Sequence[Record]) -> None:
        """Nothing to fetch: the schemas are local."""

    def peek(self, value: bytes | None, headers: Headers = None) -> Peeked | None:
        """See `Decoder.peek`."""
        if not value or value[:2] != SINGLE_OBJECT_MAGIC:
            return None
        plan = self._plans.get(value[2:10])
        return None if plan is None else _peek(value, 10, plan)

    def decode(self, value: bytes | None, headers: Headers = None) -> Call:
        """Decode one record value (single-object encoding carries its own fingerprint)."""
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
        return _read(value, 10, schema, self._strings.get(value[2:10]))


class RegistryDecoder:
    """Confluent wire format; writer schemas fetched from the Schema Registry once per id.

    The schema id is found by confluent-kafka's own deserializer support
    (`dual_schema_id_deserializer`): a `__value_schema_id` record header (a schema GUID, as
    newer serializers write it) when there is one, else the value's prefix: magic byte 0 and a
    4-byte id, or magic byte 1 and a 16-byte GUID (the newer id format).
    """

    def __init__(
        self,
        registry: Any,
        schemas: SchemaSet | None = None,
        *,
        setting: str = "SCHEMA_REGISTRY_URL",
        check_access: bool = False,
    ) -> None:
        self._registry = registry
        self._schemas = schemas or load_schemas()
        self._setting = setting  # the setting a refusal names (the credentials given)
        self._access_checked = not check_access
        self._by_id: dict[int | str, WriterSchema] = {}
        self._plans: dict[int | str, Plan] = {}
        self._strings: dict[int | str, Strings] = {}
        self._unknown: dict[int | str, tuple[float, str]] = {}  # id -> (until, dead-letter reason)

    async def prepare(self, records: Sequence[Record]) -> None:
        """Fetch the writer schemas of these records that are not known yet (in a thread)."""
        if not self._access_checked:
            await asyncio.to_thread(self._check_access)
        now = time.monotonic()
        wanted: set[int | str] = set()
        for record in records:
            try:
                schema_id = self._locate(_require_bytes(record.value), record.headers)[0]
            except DecodeError:
                continue  # decode says why, record by record
            if schema_id not in self._by_id:
                unknown = self._unknown.get(schema_id)
                if unknown is None or unknown[0] < now:
                    wanted.add(schema_id)
        for schema_id in sorted(wanted, key=str):
            await asyncio.to_thread(self._fetch, schema_id)

    def close(self) -> None:
        """Close the registry client's connections."""
        close = getattr(self._registry, "close", None)
        if close is not None:
            close()

    def _check_access(self) -> None:
        """One light request (`GET /schemas/types`) before the first fetch: credentials the
        registry refuses stop the service at start, not at the first record."""
        try:
            self._registry.get_schema_types()
        except Exception as exc:
            problem = classify(exc, self._setting)
            if problem is not None:
                raise problem from None
            # any other answer (a registry without that endpoint): the first fetch will tell
        self._access_checked = True

    def _fetch(self, schema_id: int | str) -> None:
        """Ask the registry for one writer schema and remember the answer (or its absence)."""
        import orjson

        try:
            if isinstance(schema_id, int):
                registered = self._registry.get_schema(schema_id)
            else:
                registered = self._registry.get_schema_by_guid(schema_id)
        except Exception as exc:  # an answer, or none (refused, reset, timed out; TLS)
            problem = classify(exc, self._setting)
            if problem is not None:
                raise problem from None
            status, words = status_of(exc), said(exc) or "no reason given"
            if status == 404:
                reason = f"unknown schema id {schema_id}: {words}"
            else:
                reason = f"schema id {schema_id}: the Schema Registry answered {status}: {words}"
            log.warning("schema id refused", extra={"schema_id": schema_id, "error": reason})
            self._unknown[schema_id] = (time.monotonic() + UNKNOWN_ID_SECONDS, reason)
            return
        resolved = self._schemas.resolve(orjson.loads(registered.schema_str))
        if resolved is None:
            reason = f"schema id {schema_id} is not one of our calls ({'/'.join(CALL_TYPES)})"
            self._unknown[schema_id] = (time.monotonic() + UNKNOWN_ID_SECONDS, reason)
            return
        self._unknown.pop(schema_id, None)
        self._by_id[schema_id] = resolved
        self._plans.update(_planned({schema_id: resolved}, peek_plan))
        self._strings.update(_planned({schema_id: resolved}, strings_plan))

    def _writer(self, schema_id: int | str) -> WriterSchema:
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        unknown = self._unknown.get(schema_id)
        if unknown is not None:
            raise DecodeError(unknown[1])
        self._fetch(schema_id)  # not prepared (a tool decoding one record): fetch it now
        return self._writer(schema_id)

    def peek(self, value: bytes | None, headers: Headers = None) -> Peeked | None:
        """See `Decoder.peek` (only for schemas `prepare` fetched)."""
        if not value:
            return None
        try:
            schema_id, start = self._locate(value, headers)
        except DecodeError:
            return None
        plan = self._plans.get(schema_id)
        return None if plan is None else _peek(value, start, plan)

    def decode(self, value: bytes | None, headers: Headers = None) -> Call:
        """Decode one record value; `headers` (the record's) may carry its schema id."""
        value = _require_bytes(value)
        schema_id, start = self._locate(value, headers)
        return _read(value, start, self._writer(schema_id), self._strings.get(schema_id))

    def _locate(self, value: bytes, headers: Headers) -> tuple[int | str, int]:
        """The record's schema id and where its Avro body starts."""
        if value[0] == CONFLUENT_MAGIC and len(value) >= 5 and not _has_schema_header(headers):
            # the common case, measured on the hot path: what the prefix deserializer reads,
            # without its per-record objects (≈ 2.5 µs a record)
            return int.from_bytes(value[1:5], "big"), 5
        return self._locate_general(value, headers)

    def _locate_general(self, value: bytes, headers: Headers) -> tuple[int | str, int]:
        """A header schema id or the GUID prefix, through confluent-kafka's deserializer."""
        from confluent_kafka.schema_registry import (
            MessageField,
            SerializationContext,
            SerializationError,
            dual_schema_id_deserializer,
        )
        from confluent_kafka.schema_registry.serde import SchemaId

        found = SchemaId("AVRO")
        context = SerializationContext("", MessageField.VALUE, headers) if headers else None
        try:
            body = dual_schema_id_deserializer(value, context, found)
        except (SerializationError, struct.error, ValueError):
            if value[0] == 1:  # the GUID format, but fewer than 16 bytes follow
                raise DecodeError(
                    "truncated schema GUID after magic byte 01: a cut record, or the wrong "
                    "magic byte (expected 00 or 01, Confluent)"
                ) from None
            raise DecodeError(
                f"wrong magic byte {value[:1].hex()} (expected 00 or 01, Confluent)"
            ) from None
        if found.id is not None:
            return found.id, body.tell()
        if found.guid is not None:
            return str(found.guid), body.tell()
        raise DecodeError("no schema id in the record")


def _has_schema_header(headers: Headers) -> bool:
    return bool(headers) and any(name == VALUE_SCHEMA_ID_HEADER for name, _ in headers or ())


def make_decoder(source: Settings | str | None) -> Decoder:
    """The decoder the settings ask for: local schemas, or the Schema Registry built from the
    settings (its auth, TLS and timeout included; its access checked before the first fetch).
    A bare URL (tests: `mock://…`) means no auth and no check."""
    if isinstance(source, str) or source is None:
        if not source:
            return LocalDecoder()
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return RegistryDecoder(SchemaRegistryClient.new_client({"url": source}))
    client = registry_client(source)
    if client is None:
        return LocalDecoder()
    mock = str(source.schema_registry_url).startswith("mock://")
    return RegistryDecoder(client, setting=auth_setting(source), check_access=not mock)
