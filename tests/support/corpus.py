"""A corpus of malformed records, each with the reason its dead letter must give.

Every kind of bad input the issue names (and a few more), built the way a buggy producer would
write it: wrong magic bytes, unknown schemas, truncated or corrupt Avro, records written with
another schema, missing required fields, invalid identifiers, oversized strings and requests,
unknown call types, huge property maps. `interleave` mixes them with good calls so a test can
check that every bad record lands in the dead-letter topic with the right reason while every
good one is delivered. Each bad record carries a `corpus-kind` header (dead letters keep the
original headers), so a dead letter names what it was.
"""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fastavro

from stream.intake.avro import CONFLUENT_MAGIC, encode_single_object, load_schemas
from stream.ops.produce import key_of, to_avro_record

KIND_HEADER = "corpus-kind"
NOW = "2026-01-02T03:04:05+00:00"


@dataclass(frozen=True)
class BadRecord:
    """One malformed record and a substring its dead letter's `dlq.error.message` must hold."""

    kind: str
    value: bytes | None
    reason: str
    stage: str

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [(KIND_HEADER, self.kind.encode())]


def _mid() -> str:
    return str(uuid.uuid4())


def _track(**over: Any) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "track",
        "messageId": _mid(),
        "timestamp": NOW,
        "userId": "corpus-user",
        "event": "Corpus Event",
        "properties": {"n": 1},
        "context": {"traits": {"email": "corpus@example.com"}},
    }
    call.update(over)
    return call


def _identify(traits: dict[str, Any], **over: Any) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "identify",
        "messageId": _mid(),
        "timestamp": NOW,
        "userId": "corpus-user",
        "traits": traits,
    }
    call.update(over)
    return call


def encode(call: dict[str, Any]) -> bytes:
    """A call in the local wire format (single-object Avro), as `produce` writes it."""
    call_type, record = to_avro_record(call)
    return encode_single_object(load_schemas().current[call_type], record)  # type: ignore[index]


def _raw_avro(call: dict[str, Any], prefix: bytes) -> bytes:
    """Avro body of `call` (its own schema) behind an arbitrary header."""
    call_type, record = to_avro_record(call)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schemas().current[call_type], record)  # type: ignore[index]
    return prefix + buf.getvalue()


HEARTBEAT_SCHEMA = {  # a record that is not one of our call types
    "type": "record",
    "name": "Heartbeat",
    "namespace": "io.klaviyostream.calls",
    "fields": [{"name": "messageId", "type": "string"}, {"name": "name", "type": "string"}],
}


def bad_records() -> list[BadRecord]:
    """One record of every malformed kind (25 kinds), local wire format."""
    good_track = encode(_track())
    identify_fp = encode(_identify({"email": "a@example.com"}))[2:10]
    heartbeat = encode_single_object(
        fastavro.parse_schema(HEARTBEAT_SCHEMA), {"messageId": _mid(), "name": "Home"}
    )
    track_body_as_identify = b"\xc3\x01" + identify_fp + _raw_avro(_track(), b"")
    return [
        BadRecord("tombstone", None, "empty record value", "decode"),
        BadRecord("wrong magic byte", b"\x7b\x22type\x22: \x22track\x22}", "wrong magic", "decode"),
        BadRecord(
            "confluent without registry",
            bytes([CONFLUENT_MAGIC]) + b"\0\0\0\x07abc",
            "SCHEMA_REGISTRY_URL is not set",
            "decode",
        ),
        BadRecord(
            "unknown schema fingerprint",
            b"\xc3\x01" + b"\x13" * 8 + good_track[10:],
            "unknown schema fingerprint",
            "decode",
        ),
        BadRecord(
            "unknown call type (heartbeat)", heartbeat, "unknown schema fingerprint", "decode"
        ),
        BadRecord("truncated avro", good_track[: len(good_track) // 2], "Avro body", "decode"),
        BadRecord("corrupt avro", good_track[:10] + b"\xff" * 40, "corrupt Avro body", "decode"),
        BadRecord("trailing bytes", good_track + b"\x00\x01\x02", "trailing bytes", "decode"),
        BadRecord("schema mismatch", track_body_as_identify, "Avro body", "decode"),
        BadRecord(
            "missing messageId",
            encode(_track(messageId="")),
            "missing required field 'messageId'",
            "decode",
        ),
        BadRecord(
            "missing timestamp",
            encode(_track(timestamp="")),
            "missing required field 'timestamp'",
            "decode",
        ),
        BadRecord(
            "track without event name", encode(_track(event="")), "needs an 'event' name", "decode"
        ),
        BadRecord(
            "alias without previousId",
            encode(
                {
                    "type": "alias",
                    "messageId": _mid(),
                    "timestamp": NOW,
                    "userId": "u",
                    "previousId": "",
                }
            ),
            "needs 'previousId' and 'userId'",
            "decode",
        ),
        BadRecord(
            "traits not JSON",
            encode(_identify({"email": "x@example.com"}) | {"traits": "{not json"}),
            "field 'traits' is not valid JSON",
            "decode",
        ),
        BadRecord(
            "properties not an object",
            encode(_track(properties="[1, 2]")),
            "must be a JSON object",
            "decode",
        ),
        BadRecord(  # the only name of its person: not silently an anonymous call
            "invalid email",
            encode(_identify({"email": "not-an-email"}, userId=None, anonymousId="a-1")),
            "invalid email address",
            "identity",
        ),
        BadRecord(
            "invalid phone",
            encode(_identify({"phone": "12"}, userId=None, anonymousId="a-2")),
            "invalid phone number",
            "identity",
        ),
        BadRecord(
            "external_id too long",
            encode(_identify({}, userId="u" * 300)),
            "external_id longer than 255",
            "identity",
        ),
        BadRecord(
            "timestamp not ISO-8601",
            encode(_track(timestamp="yesterday")),
            "is not ISO-8601",
            "map",
        ),
        BadRecord(
            "timestamp before 1990",
            encode(_track(timestamp="1970-01-01T00:00:00Z")),
            "before 1990",
            "map",
        ),
        BadRecord(
            "timestamp a year ahead",
            encode(_track(timestamp="2999-01-01T00:00:00Z")),
            "more than a year ahead",
            "map",
        ),
        BadRecord("metric name too long", encode(_track(event="E" * 129)), "metric name", "map"),
        BadRecord(
            "huge properties map",
            encode(_track(properties={f"p{i}": i for i in range(1000)})),
            "Klaviyo allows 400",
            "map",
        ),
        BadRecord(
            "string over 100 KB",
            encode(_track(properties={"blob": "x" * 150_000})),
            "100 KB",
            "map",
        ),
        BadRecord(
            "request over 5 MB",
            encode(_track(properties={f"b{i}": "x" * 90_000 for i in range(60)})),
            "5 MB",
            "map",
        ),
    ]


def interleave(
    good: list[dict[str, Any]], bad: list[BadRecord], seed: int = 5
) -> Iterator[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) of every good call and every bad record, bad ones at random
    places; the good calls keep their order (a person's identify before their events)."""
    rng = random.Random(seed)
    slots = sorted(rng.randrange(len(good) + 1) for _ in bad)
    shuffled = list(bad)
    rng.shuffle(shuffled)
    b = 0
    for i, call in enumerate(good):
        while b < len(slots) and slots[b] == i:
            yield b"corpus-user", shuffled[b].value, shuffled[b].headers
            b += 1
        yield key_of(call), encode(call), []
    for record in shuffled[b:]:
        yield b"corpus-user", record.value, record.headers
