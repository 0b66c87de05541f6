"""Both wire formats decode, older schema versions still decode, and bad bytes say why."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro.schema import parse_schema

from stream.avro import encode_confluent, encode_single_object, load_schemas, schemas_dir
from stream.decode import LocalDecoder, RegistryDecoder
from stream.errors import DecodeError
from stream.produce import Encoder, to_avro_record

ORDER = {
    "type": "track",
    "messageId": "m-1",
    "timestamp": "2026-02-02T12:00:00Z",
    "userId": "u-1",
    "event": "Ordered Product",
    "properties": {
        "revenue": 12.5,
        "gift": True,
        "count": 2,
        "products": [{"sku": "A", "price": 1.5, "tags": ["x"]}],
    },
    "context": {"ip": "10.0.0.1"},
}


def v1_track() -> dict:
    return parse_schema(json.loads((schemas_dir() / "history" / "track.v1.avsc").read_text()))


def test_local_round_trip_keeps_nested_values_and_types() -> None:
    call = LocalDecoder().decode(Encoder().encode(ORDER))
    assert call.type == "track" and call.event == "Ordered Product"
    assert call.properties == ORDER["properties"]
    assert call.context == {"ip": "10.0.0.1"}


def test_record_written_with_an_older_schema_version_still_decodes() -> None:
    _, record = to_avro_record(ORDER)
    call = LocalDecoder().decode(encode_single_object(v1_track(), record))
    assert call.properties == ORDER["properties"] and call.context == {}


def test_registry_round_trip_and_older_version_through_the_registry() -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://decode"})
    decoder = RegistryDecoder(registry)
    assert decoder.decode(Encoder(registry=registry, topic="t").encode(ORDER)).message_id == "m-1"
    old_id = registry.register_schema("t-old", Schema(json.dumps(v1_track()), "AVRO"))
    _, record = to_avro_record(ORDER)
    call = decoder.decode(encode_confluent(old_id, v1_track(), record))
    assert call.properties == ORDER["properties"] and call.context == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"\x07\x01garbage", "wrong magic"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown schema fingerprint"),
        (b"\x00\x00\x00\x00\x01body", "Confluent wire format"),
    ],
)
def test_bad_bytes_are_decode_errors_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        LocalDecoder().decode(value)


def test_truncated_body_is_a_decode_error() -> None:
    value = Encoder().encode(ORDER)
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        LocalDecoder().decode(value[:-7])


def test_unknown_schema_id_in_the_registry_is_a_decode_error() -> None:
    decoder = RegistryDecoder(SchemaRegistryClient.new_client({"url": "mock://empty"}))
    schema = load_schemas().current["track"]
    with pytest.raises(DecodeError, match="unknown schema id 999"):
        decoder.decode(encode_confluent(999, schema, to_avro_record(ORDER)[1]))


def test_missing_required_field_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="messageId"):
        LocalDecoder().decode(Encoder().encode({**ORDER, "messageId": ""}))
