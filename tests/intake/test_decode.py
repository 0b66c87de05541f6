"""Both wire formats decode, older schema versions still decode, and bad bytes say why."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro.schema import parse_schema

from stream.core.calls import CALL_TYPES
from stream.core.errors import DecodeError
from stream.core.options import NO_OPTIONS
from stream.intake.avro import (
    encode_confluent,
    encode_single_object,
    load_schemas,
    schemas_dir,
    single_object_fingerprint,
)
from stream.intake.decode import LocalDecoder, RegistryDecoder
from stream.ops.produce import Encoder, to_avro_record

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


CALLS = {
    "identify": {"type": "identify", "messageId": "i-1", "timestamp": "2026-02-02T12:00:00Z",
                 "userId": "u-1", "traits": {"email": "a@example.com", "n": 1.5},
                 "context": {"ip": "10.0.0.2"}},
    "track": ORDER,
    "page": {"type": "page", "messageId": "p-1", "timestamp": "2026-02-02T12:00:00Z",
             "anonymousId": "a-1", "name": "Home", "properties": {"path": "/"},
             "context": {"locale": "fr"}},
    "alias": {"type": "alias", "messageId": "a-1", "timestamp": "2026-02-02T12:00:00Z",
              "userId": "u-1", "previousId": "anon-1", "context": {"ip": "10.0.0.3"}},
}  # fmt: skip
HISTORY = sorted((schemas_dir() / "history").glob("*.avsc"))


@pytest.mark.parametrize("path", HISTORY, ids=[p.stem for p in HISTORY])
def test_every_historical_schema_version_still_decodes_both_wire_formats(path: Any) -> None:
    writer = parse_schema(json.loads(path.read_text()))
    call_type = path.stem.split(".")[0]
    source = CALLS[call_type]
    _, record = to_avro_record(source)
    registry = SchemaRegistryClient.new_client({"url": f"mock://history-{path.stem}"})
    schema_id = registry.register_schema(f"t-{path.stem}", Schema(json.dumps(writer), "AVRO"))
    for call in (
        LocalDecoder().decode(encode_single_object(writer, record)),
        RegistryDecoder(registry).decode(encode_confluent(schema_id, writer, record)),
    ):
        assert (call.type, call.message_id, call.user_id) == (
            call_type, source["messageId"], source.get("userId")
        )  # fmt: skip
        written = {f["name"] for f in writer["fields"]}
        for key in ("traits", "properties", "context"):
            if key in source:
                assert getattr(call, key) == (source[key] if key in written else {})
        assert call.for_klaviyo  # integrations did not exist yet: the default


def test_every_history_version_is_older_than_the_current_schema() -> None:
    current = load_schemas().current
    for path in HISTORY:
        fields = {f["name"] for f in json.loads(path.read_text())["fields"]}
        now = {f["name"] for f in current[path.stem.split(".")[0]]["fields"]}  # type: ignore[index]
        assert fields < now, path.name  # a strict subset: every added field has a default


@pytest.mark.parametrize(
    "call",
    [
        {"type": "screen", "messageId": "s-1", "timestamp": "2026-02-02T12:00:00Z",
         "userId": "u-1", "name": "Cart", "category": "Shop", "properties": {"items": 2}},
        {"type": "group", "messageId": "g-1", "timestamp": "2026-02-02T12:00:00Z",
         "userId": "u-1", "groupId": "acme", "traits": {"name": "Acme", "employees": 50}},
    ],
)  # fmt: skip
def test_screen_and_group_round_trip_locally_and_through_a_registry(call: dict) -> None:
    registry = SchemaRegistryClient.new_client({"url": f"mock://{call['type']}"})
    for value, decoder in (
        (Encoder().encode(call), LocalDecoder()),
        (Encoder(registry=registry, topic="t").encode(call), RegistryDecoder(registry)),
    ):
        decoded = decoder.decode(value)
        assert decoded.type == call["type"]
        assert decoded.name == call.get("name")
        assert decoded.group_id == call.get("groupId")
        assert decoded.properties == call.get("properties", {})
        assert decoded.traits == call.get("traits", {})


def test_integrations_survive_the_wire_and_a_group_without_group_id_cannot_be_written() -> None:
    call = LocalDecoder().decode(
        Encoder().encode({**ORDER, "integrations": {"All": False, "Klaviyo": {"suppress": True}}})
    )
    assert call.for_klaviyo and call.options.suppress is True
    with pytest.raises(ValueError):  # fastavro: required field missing
        Encoder().encode({"type": "group", "messageId": "g", "timestamp": "2026-01-01T00:00:00Z"})


def test_null_json_fields_are_written_as_empty_objects() -> None:
    call = LocalDecoder().decode(
        Encoder().encode({**ORDER, "properties": None, "context": None, "integrations": None})
    )
    assert (call.properties, call.context, call.for_klaviyo) == ({}, {}, True)


SHIPPED = sorted(schemas_dir().glob("*.avsc")) + HISTORY
# Apicurio Registry 3's Avro content check strips `: "{}"` before parsing, so a schema with a
# string default of exactly "{}" is "not Avro" there (422 on register, 400 when served by id)
APICURIO_STRIPPED = re.compile(r': *"\{}"')


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_no_shipped_schema_has_a_default_apicurio_cannot_read(path: Path) -> None:
    assert not APICURIO_STRIPPED.search(path.read_text()), path


CALL_SCHEMAS = [p for p in SHIPPED if p.name.split(".")[0] in CALL_TYPES]  # catalog's apart


@pytest.mark.parametrize("path", CALL_SCHEMAS, ids=[p.name for p in CALL_SCHEMAS])
def test_records_written_before_the_defaults_changed_still_decode(path: Path) -> None:
    """Our JSON-text defaults were "{}" and are "{ }": a compatible change (defaults are not
    part of the canonical form, so the fingerprint is the same), and a record written with
    the earlier text decodes, locally and through a registry that holds that text."""
    earlier_text = path.read_text().replace('"{ }"', '"{}"')
    assert earlier_text != path.read_text()
    earlier = parse_schema(json.loads(earlier_text))
    now = parse_schema(json.loads(path.read_text()))
    assert single_object_fingerprint(earlier) == single_object_fingerprint(now)
    call_type = path.name.split(".")[0]
    source = CALLS.get(call_type) or {"type": call_type, "messageId": "x-1",
                                     "timestamp": "2026-02-02T12:00:00Z", "userId": "u-1",
                                     "groupId": "g-1", "traits": {"email": "a@example.com"}}
    record = to_avro_record(source)[1]
    record = {f["name"]: record.get(f["name"], f.get("default")) for f in earlier["fields"]}
    registry = SchemaRegistryClient.new_client({"url": f"mock://earlier-{path.name}"})
    schema_id = registry.register_schema("t-earlier", Schema(earlier_text, "AVRO"))
    for call in (
        LocalDecoder().decode(encode_single_object(earlier, record)),
        RegistryDecoder(registry).decode(encode_confluent(schema_id, earlier, record)),
    ):
        assert (call.type, call.message_id) == (call_type, source["messageId"])


def test_the_default_fills_a_field_an_older_writer_lacks_as_an_empty_object() -> None:
    writer = parse_schema(json.loads((schemas_dir() / "history" / "track.v2.avsc").read_text()))
    _, record = to_avro_record(ORDER)
    call = LocalDecoder().decode(encode_single_object(writer, record))
    assert call.for_klaviyo and call.options == NO_OPTIONS and call.context == ORDER["context"]
    writer = v1_track()
    call = LocalDecoder().decode(encode_single_object(writer, record))
    assert call.context == {} and call.for_klaviyo
