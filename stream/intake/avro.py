"""The Avro schemas of the calls we accept, and the two wire formats we read and write.

- Local (embedded default): Avro single-object encoding (`C3 01`, 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema, then the body). The fingerprint names the
  writer schema among `schemas/*.avsc` and `schemas/history/*.avsc`, so a record written with
  an older compatible version still decodes, without a registry.
- Confluent (when `SCHEMA_REGISTRY_URL` is set): byte 0, 4-byte big-endian schema id, body.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from stream.core.calls import CALL_TYPES, CallType

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
NAMESPACE = "io.klaviyostream.calls"


def schemas_dir() -> Path:
    """The installed copy (wheel) or the repository's `schemas/` (editable install)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "_schemas"
    return packaged if packaged.is_dir() else package.parent / "schemas"


def call_type_of(schema: dict[str, Any]) -> CallType | None:
    """`io.klaviyostream.calls.Track` → "track"; None for a record that is not one of ours."""
    name = str(schema.get("name", "")).rsplit(".", 1)[-1].lower()
    return name if name in CALL_TYPES else None  # type: ignore[return-value]


def single_object_fingerprint(parsed: dict[str, Any]) -> bytes:
    """The 8 bytes that follow `C3 01` in single-object encoding."""
    digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return int(digest, 16).to_bytes(8, "little")


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A schema some producer may have written with, and the current schema we read it as."""

    call_type: CallType
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None when writer is the current schema: no resolution needed


@dataclass(frozen=True)
class SchemaSet:
    """Current schema per call type plus every historical version, indexed by fingerprint."""

    current: dict[CallType, dict[str, Any]]
    by_fingerprint: dict[bytes, WriterSchema]
    raw: dict[CallType, str]

    def resolve(self, writer: dict[str, Any]) -> WriterSchema | None:
        """Pair a writer schema from a registry with our current reader schema."""
        call_type = call_type_of(writer)
        if call_type is None:
            return None
        parsed = _parse(writer)
        same = to_parsing_canonical_form(parsed) == to_parsing_canonical_form(
            self.current[call_type]
        )
        return WriterSchema(call_type, parsed, None if same else self.current[call_type])


def _parse(schema: Any) -> dict[str, Any]:
    return cast(dict[str, Any], parse_schema(schema))


@cache
def load_schemas(directory: Path | None = None) -> SchemaSet:
    """Parse `*.avsc` (current) and `history/*.avsc` (older versions) once per process."""
    root = directory or schemas_dir()
    current: dict[CallType, dict[str, Any]] = {}
    raw: dict[CallType, str] = {}
    by_fp: dict[bytes, WriterSchema] = {}
    for path in sorted(root.glob("*.avsc")):
        text = path.read_text()
        parsed = _parse(json.loads(text))
        call_type = call_type_of(parsed)
        if call_type is None:
            continue
        current[call_type] = parsed
        raw[call_type] = text
        by_fp[single_object_fingerprint(parsed)] = WriterSchema(call_type, parsed, None)
    for path in sorted((root / "history").glob("*.avsc")):
        parsed = _parse(json.loads(path.read_text()))
        call_type = call_type_of(parsed)
        if call_type is not None and call_type in current:
            by_fp.setdefault(
                single_object_fingerprint(parsed),
                WriterSchema(call_type, parsed, current[call_type]),
            )
    return SchemaSet(current=current, by_fingerprint=by_fp, raw=raw)


def encode_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Schemaless Avro body of one record."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def encode_single_object(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """One record in Avro single-object encoding (the local wire format)."""
    return SINGLE_OBJECT_MAGIC + single_object_fingerprint(schema) + encode_body(schema, record)


def encode_confluent(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """One record in Confluent wire format."""
    return bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big") + encode_body(schema, record)
