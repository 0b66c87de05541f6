"""`klaviyo-stream produce`: publish Segment JSON calls to Kafka as Avro records.

Records are written in the encoding `run` reads by default: Avro single-object encoding with
the local schemas, or Confluent wire format when `SCHEMA_REGISTRY_URL` is set (schemas are
registered under `<topic>-<RecordName>` subjects, TopicRecordNameStrategy, since one topic
holds several call types). The key is the person's userId, else anonymousId.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import Producer

from stream.avro import NAMESPACE, SchemaSet, encode_confluent, encode_single_object, load_schemas
from stream.calls import CALL_TYPES
from stream.errors import RecordError

JSON_FIELDS = ("traits", "properties", "context")


def to_avro_record(call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A Segment JSON call → (call type, Avro record with JSON-typed fields as text)."""
    call_type = call.get("type")
    if call_type not in CALL_TYPES:
        raise RecordError(f"unknown call type {call_type!r}")
    record = dict(call)
    for key in JSON_FIELDS:
        if key in record and not isinstance(record[key], str):
            record[key] = orjson.dumps(record[key]).decode()
    return call_type, record


class Encoder:
    """Encodes calls in the configured wire format."""

    def __init__(
        self, schemas: SchemaSet | None = None, registry: Any = None, topic: str = ""
    ) -> None:
        self._schemas = schemas or load_schemas()
        self._registry = registry
        self._topic = topic
        self._ids: dict[str, int] = {}

    def _schema_id(self, call_type: str) -> int:
        if call_type not in self._ids:
            from confluent_kafka.schema_registry import Schema

            subject = f"{self._topic}-{NAMESPACE}.{call_type.capitalize()}"
            schema = Schema(self._schemas.raw[call_type], "AVRO")  # type: ignore[index]
            self._ids[call_type] = self._registry.register_schema(subject, schema)
        return self._ids[call_type]

    def encode(self, call: dict[str, Any]) -> bytes:
        """One call → record value bytes."""
        call_type, record = to_avro_record(call)
        schema = self._schemas.current[call_type]  # type: ignore[index]
        if self._registry is None:
            return encode_single_object(schema, record)
        return encode_confluent(self._schema_id(call_type), schema, record)


def key_of(call: dict[str, Any]) -> bytes | None:
    """Partition key: one person's calls stay in order on one partition when keyed alike."""
    key = call.get("userId") or call.get("anonymousId")
    return str(key).encode() if key else None


def publish(
    producer_config: dict[str, Any], topic: str, calls: Iterable[dict[str, Any]], encoder: Encoder
) -> int:
    """Produce every call and wait until the broker has them all; returns the count."""
    producer = Producer({**producer_config, "linger.ms": 20, "enable.idempotence": True})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    count = 0
    for call in calls:
        value = encoder.encode(call)
        while True:
            try:
                producer.produce(topic, value=value, key=key_of(call), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        count += 1
    remaining = producer.flush(60)
    producer.close()
    if remaining or errors:
        raise RuntimeError(f"{remaining} undelivered, errors: {errors[:3]}")
    return count


def read_jsonl(path: str) -> Iterable[dict[str, Any]]:
    """Calls from a JSON-lines file (blank lines skipped)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise RecordError(f"{path}:{number}: not JSON: {exc}") from None
