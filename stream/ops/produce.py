"""`klaviyo-stream produce`: publish Segment JSON calls to Kafka as Avro records.

Records are written in the encoding `run` reads by default: Avro single-object encoding with
the local schemas, or Confluent wire format when `SCHEMA_REGISTRY_URL` is set. In registry
mode every call type's schema is registered before anything is published, under its
`<topic>-<RecordName>` subject (TopicRecordNameStrategy, since one topic holds several call
types): a schema the registry refuses (409: incompatible) stops the run with the registry's
words and nothing published. A principal that may read but not register (403) looks the
schemas up instead. The key is the person's userId, else anonymousId.

From a JSON-lines file (`publish_file`), a call without `messageId` or `timestamp` gets them
the way the analytics libraries fill them (a uuid4; now, in UTC), and is counted; a line that
is not a valid call is reported by its number and skipped (or, `strict`, stops the run).
Whatever happens, what was already handed to the producer is flushed to the broker.
`backfill` marks every record as a historical load (`klaviyo-stream.backfill: 1`, as
`dlq replay` does): events go with `backfill: true`, subscriptions as a historical import.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from stream.core.calls import CALL_TYPES, CallType, normalize
from stream.core.errors import PublishError, RecordError, StreamError
from stream.intake.avro import (
    CONFLUENT_MAGIC,
    NAMESPACE,
    SINGLE_OBJECT_MAGIC,
    SchemaSet,
    encode_body,
    load_schemas,
    single_object_fingerprint,
)
from stream.intake.registry import classify, said, status_of
from stream.klaviyo.mapping import BACKFILL_HEADER
from stream.ops.produce_catalog import CatalogEncoder, is_catalog

JSON_FIELDS = ("traits", "properties", "context", "integrations")
POLL_EVERY = 1000  # records between two polls of the producer (delivery reports, errors)
PROGRESS_EVERY = 5000  # lines between two progress-bar updates


def to_avro_record(call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A Segment JSON call → (call type, Avro record with JSON-typed fields as text).

    A missing or `null` JSON field (some libraries write one) is written as `{}`, not as the
    schema's default (`{ }`, which the reader takes on a slower path)."""
    call_type = call.get("type")
    if call_type not in CALL_TYPES:
        raise RecordError(f"unknown call type {call_type!r} (expected one of {CALL_TYPES})")
    record = dict(call)
    for key in JSON_FIELDS:
        value = record.get(key)
        if value is None:
            record[key] = "{}"  # a field this call type does not have is not written
        elif not isinstance(value, str):
            record[key] = orjson.dumps(value).decode()
    return call_type, record


def fill_missing(call: dict[str, Any]) -> tuple[str, ...]:
    """Give a call without `messageId` or `timestamp` the values the analytics libraries
    would have given it (a uuid4; now, UTC, to the millisecond); the names of those filled."""
    filled: list[str] = []
    if call.get("messageId") is None:
        call["messageId"] = str(uuid.uuid4())
        filled.append("messageId")
    if call.get("timestamp") is None:
        call["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        filled.append("timestamp")
    return tuple(filled)


class _NotRegistered(PublishError):
    """A schema this principal may not register (403) is not registered yet."""


def subject_name(topic: str, call_type: str) -> str:
    """`<topic>-io.klaviyostream.calls.<Type>`: the TopicRecordNameStrategy subject."""
    return f"{topic}-{NAMESPACE}.{call_type.capitalize()}"


class Encoder:
    """Encodes calls in the configured wire format. With a registry, `register()` registers
    (or looks up) every call type's schema first; `setting` is what a refusal names."""

    def __init__(
        self,
        schemas: SchemaSet | None = None,
        registry: Any = None,
        topic: str = "",
        setting: str = "SCHEMA_REGISTRY_URL",
    ) -> None:
        self._schemas = schemas or load_schemas()
        self._registry = registry
        self._topic = topic
        self._setting = setting
        self._headers: dict[str, bytes] = {}  # call type → magic bytes + schema fingerprint/id
        self._missing: dict[str, _NotRegistered] = {}  # looked up, not found: refused when used
        self.catalog = CatalogEncoder(registry, topic)  # catalog lines (`produce_catalog`)

    def register(self) -> None:
        """Registry mode: every call type's schema registered (or looked up) now, so that one
        the registry refuses stops a run before it publishes anything."""
        if self._registry is None:
            return
        for call_type in CALL_TYPES:
            if call_type in self._schemas.current:
                try:
                    self._header(call_type)
                except _NotRegistered as missing:  # a call type this run may never publish
                    self._missing[call_type] = missing

    def _header(self, call_type: str) -> bytes:
        header = self._headers.get(call_type)
        if header is None:
            refused = self._missing.get(call_type)
            if refused is not None:
                raise refused
            schema = self._schemas.current[call_type]  # type: ignore[index]
            if self._registry is None:
                header = SINGLE_OBJECT_MAGIC + single_object_fingerprint(schema)
            else:
                schema_id = self._schema_id(call_type)  # type: ignore[arg-type]
                header = bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
            self._headers[call_type] = header
        return header

    def _schema_id(self, call_type: CallType) -> int:
        """Register the schema under its subject; one who may not (403) looks it up."""
        from confluent_kafka.schema_registry import Schema

        subject = subject_name(self._topic, call_type)
        schema = Schema(self._schemas.raw[call_type], "AVRO")
        try:
            return int(self._registry.register_schema(subject, schema))
        except Exception as exc:
            if status_of(exc) != 403:
                raise self._refusal(call_type, subject, exc) from None
        try:
            return int(self._registry.lookup_schema(subject, schema).schema_id)
        except Exception as exc:
            if status_of(exc) == 404:
                raise _NotRegistered(
                    f"the {call_type} schema is not registered under {subject}, and "
                    f"{self._setting} may not register it (403): register it, or publish "
                    "with a principal that may"
                ) from None
            raise self._refusal(call_type, subject, exc) from None

    def _refusal(self, call_type: str, subject: str, exc: Exception) -> StreamError:
        problem = classify(exc, self._setting)
        if problem is not None:
            return problem
        return PublishError(
            f"the Schema Registry refused the {call_type} schema under {subject} "
            f"({status_of(exc)}: {said(exc) or 'no reason given'}); nothing was published"
        )

    def encode(self, call: dict[str, Any]) -> bytes:
        """One call → record value bytes (the schema fingerprint or id is computed once)."""
        call_type, record = to_avro_record(call)
        schema = self._schemas.current[call_type]  # type: ignore[index]
        return self._header(call_type) + encode_body(schema, record)


def key_of(call: dict[str, Any]) -> bytes | None:
    """Partition key: one person's calls stay in order on one partition when keyed alike."""
    key = call.get("userId") or call.get("anonymousId")
    return str(key).encode() if key else None



class Publisher:
    """A producer that always flushes: on `close()`, and on leaving a `with` block by an error.

    Delivery reports are asked for failures only (`delivery.report.only.error`), so a
    successful record costs no Python callback."""

    def __init__(
        self, producer_config: dict[str, Any], topic: str, *, backfill: bool = False
    ) -> None:
        self._topic = topic
        self._headers: list[tuple[str, str | bytes | None]] | None = (
            [(BACKFILL_HEADER, b"1")] if backfill else None
        )
        self.errors: list[str] = []
        self.sent = 0
        self._producer = Producer(
            {
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                **producer_config,
                "enable.idempotence": True,
                "delivery.report.only.error": True,
                "on_delivery": self._failed,
            }
        )

    def _failed(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send(self, value: bytes | None, key: bytes | None) -> None:
        """Hand one record to librdkafka (waiting for room when its queue is full); a None
        value is a tombstone (a catalog resource deleted)."""
        produce = self._producer.produce
        while True:
            try:
                if self._headers is None:
                    produce(self._topic, value, key)
                else:
                    produce(self._topic, value, key, headers=self._headers)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.sent += 1
        if self.sent % POLL_EVERY == 0:
            self._producer.poll(0)

    def close(self, timeout: float = 60) -> None:
        """Wait until the broker has every record; `PublishError` saying what was not."""
        remaining = self._producer.flush(timeout)
        self._producer.close()
        if remaining or self.errors:
            raise PublishError(
                f"{remaining} record(s) not delivered within {timeout:g} s; "
                f"{len(self.errors)} delivery error(s): {self.errors[:3]}"
            )

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._producer.flush(60)  # the error is the one to report; still, nothing is lost
            self._producer.close()


def publish(
    producer_config: dict[str, Any],
    topic: str,
    calls: Iterable[dict[str, Any]],
    encoder: Encoder,
    *,
    backfill: bool = False,
) -> int:
    """Produce every call and wait until the broker has them all; returns the count.

    A call that cannot be encoded raises after what was sent before it is flushed."""
    encoder.register()
    with Publisher(producer_config, topic, backfill=backfill) as publisher:
        for call in calls:
            publisher.send(encoder.encode(call), key_of(call))
    return publisher.sent


# JSON-lines files -------------------------------------------------------------------------


@dataclass
class FileReport:
    """What `publish_file` did: counts, refused lines by number, the line `strict` stopped at."""

    published: int = 0
    catalog: int = 0  # of which catalog records (tombstones included)
    refused: list[tuple[int, str]] = field(default_factory=list)
    filled: Counter[str] = field(default_factory=Counter)
    stopped_at: int | None = None


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line of a file."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def parse_call(line: bytes) -> tuple[dict[str, Any], tuple[str, ...]]:
    """One line → a checked Segment call (missing ids and times filled) and what was filled.

    The call is checked as the service's decoder would check it, so a line the service would
    dead-letter for its shape is refused here, by its line number, instead."""
    try:
        call = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(call, dict):
        raise RecordError(f"not a JSON object (a call), got {type(call).__name__}")
    filled = fill_missing(call)
    call_type = call.get("type")
    if call_type not in CALL_TYPES:
        raise RecordError(f"unknown call type {call_type!r} (expected one of {CALL_TYPES})")
    normalize(call_type, call)
    return call, filled


def publish_file(
    producer_config: dict[str, Any],
    topic: str,
    path: str | Path,
    encoder: Encoder,
    *,
    strict: bool = False,
    on_refused: Callable[[int, str], None] | None = None,
    progress: bool = False,
    backfill: bool = False,
) -> FileReport:
    """Publish a JSON-lines file of calls; bad lines are reported (`on_refused(number,
    reason)`) and skipped, or with `strict` stop the run. What was sent is always flushed."""
    report = FileReport()
    encoder.register()
    bar = _progress_bar(path) if progress else None
    with Publisher(producer_config, topic, backfill=backfill) as publisher:
        read = 0
        try:
            for number, line in read_lines(path):
                read += len(line)
                if bar is not None and number % PROGRESS_EVERY == 0:
                    bar.update(read - bar.n)
                try:
                    catalog = _catalog_line(line, encoder)
                    if catalog is not None:
                        publisher.send(catalog[1], catalog[0])
                        report.catalog += 1
                        continue
                    call, filled = parse_call(line)
                    value = encoder.encode(call)
                except (StreamError, ValueError, TypeError, OverflowError) as exc:
                    reason = _reason(exc)
                    report.refused.append((number, reason))
                    if on_refused is not None:
                        if bar is not None:
                            bar.clear()  # the report gets its own line, the bar redraws below
                        on_refused(number, reason)
                        if bar is not None:
                            bar.refresh()
                    if strict:
                        report.stopped_at = number
                        break
                    continue
                publisher.send(value, key_of(call))
                for name in filled:
                    report.filled[name] += 1
        finally:
            if bar is not None:
                bar.update(read - bar.n)
                bar.close()
    report.published = publisher.sent
    return report


def _catalog_line(line: bytes, encoder: Encoder) -> tuple[bytes, bytes | None] | None:
    """(key, value) of a catalog line (`stream.ops.produce_catalog`); None for a call."""
    if b'"catalog_' not in line:
        return None
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # parse_call says what is wrong with it
    if not isinstance(parsed, dict) or not is_catalog(parsed):
        return None
    return encoder.catalog.encode(parsed)


def _reason(exc: Exception) -> str:
    if isinstance(exc, StreamError):
        return str(exc)
    return f"not a valid call for its Avro schema: {type(exc).__name__}: {exc}"  # fastavro


def _progress_bar(path: str | Path) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=Path(path).stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"publishing {Path(path).name}",
        leave=True,
    )
