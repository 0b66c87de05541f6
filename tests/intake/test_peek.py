"""`Decoder.peek`: the routing fields read without decoding the rest always agree with a full
decode, and every record it cannot read surely (older schemas, alias and group, bad bytes, what
`normalize` refuses) is left to `decode`, which says why."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro.schema import parse_schema
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.calls import Call, routing_call
from stream.core.errors import RecordError
from stream.intake.avro import encode_confluent, encode_single_object, schemas_dir
from stream.intake.decode import LocalDecoder, RegistryDecoder
from stream.ops.produce import Encoder, to_avro_record
from tests.support.inprocess import assembled, begin, offline_settings

ENCODER = Encoder()
DECODER = LocalDecoder()
text = st.text(max_size=300)  # lengths past 63 bytes take multi-byte varints
integrations = st.sampled_from(
    [
        None,
        {},
        {"Klaviyo": False},
        {"All": False},
        {"All": False, "Klaviyo": True},
        {"klaviyo": {"unset": ["plan"]}},
        {"Klaviyo": {"unset": 5}},  # malformed options: decode names the key
        {"Segment.io": True, "All": True},
    ]
)


@st.composite
def calls(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["identify", "track", "page", "screen"]))
    call: dict[str, Any] = {
        "type": kind,
        "messageId": draw(text),
        "timestamp": draw(st.sampled_from(["2026-02-02T12:00:00Z", "", "yesterday"])),
        "userId": draw(st.none() | text),
        "anonymousId": draw(st.none() | text),
        "context": draw(st.dictionaries(text, text, max_size=3)),
    }
    if kind == "track":
        call["event"] = draw(text)
    if kind in ("page", "screen"):
        call["name"] = draw(st.none() | text)
    if kind == "identify":
        call["traits"] = {"email": draw(text)}
    else:
        call["properties"] = draw(st.dictionaries(text, text | st.integers(), max_size=4))
    wanted = draw(integrations)
    if wanted is not None:
        call["integrations"] = wanted
    return call


def routing(call: Call | None) -> tuple[Any, ...]:
    assert call is not None
    return (call.type, call.event, call.name, call.for_klaviyo, call.options)


def peeked_call(peeked: Any) -> Call | None:
    """The routing call a peek makes (None: its integrations need a full decode)."""
    return routing_call(*peeked)


@settings(max_examples=400, deadline=None)
@given(calls())
def test_peek_agrees_with_a_full_decode_or_leaves_the_record_to_it(call: dict[str, Any]) -> None:
    try:
        value = ENCODER.encode(call)
    except Exception:
        return  # not a record a producer following our schema can write
    peeked = DECODER.peek(value)
    try:
        decoded = DECODER.decode(value)
    except RecordError:
        assert peeked is None or peeked_call(peeked) is None, "peek took a refused record"
        return
    assert peeked is not None, "peek gave up on a plain record of the current schema"
    assert routing(peeked_call(peeked)) == routing(decoded)


def test_peek_reads_only_the_routing_fields() -> None:
    value = ENCODER.encode(
        {"type": "track", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z", "userId": "u",
         "event": "Order Completed", "properties": {"revenue": 5}, "context": {"ip": "1.2.3.4"}}
    )  # fmt: skip
    assert DECODER.peek(value) == ("track", "Order Completed", "{}")


def test_what_peek_leaves_to_decode() -> None:
    track = {"type": "track", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z",
             "userId": "u", "event": "E", "properties": {}}  # fmt: skip
    value = ENCODER.encode(track)
    assert DECODER.peek(value) is not None
    alias = {"type": "alias", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z",
             "userId": "u", "previousId": "p"}  # fmt: skip
    group = {"type": "group", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z",
             "userId": "u", "groupId": "g"}  # fmt: skip
    old = parse_schema(json.loads((schemas_dir() / "history" / "track.v1.avsc").read_text()))
    _, record = to_avro_record(track)
    left = {
        "alias": ENCODER.encode(alias),
        "group": ENCODER.encode(group),
        "an older schema version": encode_single_object(old, record),
        "truncated": value[:-3],
        "trailing bytes": value + b"\x00",
        "a bad union index": value.replace(b"\x02\x02u", b"\x04\x02u", 1),
        "no bytes": b"",
        "another magic": b"\x00" + value[1:],
        "invalid UTF-8 in the event name": value.replace(b"\x02E", b"\x02\xff", 1),
    }
    for why, bad in left.items():
        assert DECODER.peek(bad) is None, why
    assert DECODER.peek(None) is None


def test_the_registry_decoder_peeks_once_the_schema_is_known() -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://peek"})
    decoder = RegistryDecoder(registry)
    call = {"type": "page", "messageId": "m", "timestamp": "2026-01-01T00:00:00Z",
            "userId": "u", "name": "Home", "properties": {}}  # fmt: skip
    value = Encoder(registry=registry, topic="t").encode(call)
    assert decoder.peek(value) is None  # not fetched yet: decode fetches and reads it
    decoded = decoder.decode(value)
    peeked = decoder.peek(value)
    assert peeked == ("page", "Home", "{}")
    assert routing(peeked_call(peeked)) == routing(decoded)
    old = parse_schema(json.loads((schemas_dir() / "history" / "page.v1.avsc").read_text()))
    _, record = to_avro_record(call)
    from confluent_kafka.schema_registry import Schema

    old_id = registry.register_schema("t-old", Schema(json.dumps(old), "AVRO"))
    older = encode_confluent(old_id, old, record)
    decoder.decode(older)
    assert decoder.peek(older) is None, "an older writer schema is always decoded in full"


async def test_with_definitions_the_service_routes_on_the_peek_and_decodes_only_what_goes_on(
    tmp_path: Any,
) -> None:
    from stream.intake.avro import load_schemas
    from stream.telemetry import metrics

    definitions = tmp_path / "definitions.yaml"
    definitions.write_text("events:\n  - type: track\n    event: Order Completed\n")
    settings = offline_settings(event_definitions_file=str(definitions))
    base = {"messageId": "m", "timestamp": "2026-01-01T00:00:00Z", "userId": "u-1",
            "properties": {"revenue": 5}}  # fmt: skip

    def track(n: int, event: str, **extra: Any) -> bytes:
        return ENCODER.encode({**base, "type": "track", "messageId": f"m{n}", "event": event,
                               **extra})  # fmt: skip

    schema = load_schemas().current["track"]
    _, raw = to_avro_record({**base, "type": "track", "event": "Viewed Page"})
    corrupt_other = encode_single_object(schema, {**raw, "messageId": "m3", "properties": "{no"})
    _, raw = to_avro_record({**base, "type": "track", "event": "Order Completed"})
    corrupt_ours = encode_single_object(schema, {**raw, "messageId": "m4", "properties": "{no"})
    values = [
        track(0, "Order Completed"),
        track(1, "Viewed Page"),
        track(2, "Order Completed", integrations={"Klaviyo": False}),
        corrupt_other,  # not for Klaviyo: filtered, its body never read
        corrupt_ours,  # for Klaviyo: decoded in full, and its bad properties dead-lettered
    ]
    filtered = metrics.RECORDS_FILTERED.labels("track", "not_defined")
    integrations = metrics.RECORDS_FILTERED.labels("track", "integrations")
    before = filtered._value.get(), integrations._value.get()
    async with assembled(settings) as (running, sink):
        ledger, sender = running.parts.ledger, running.parts.sender
        records = begin(ledger, values, ("t", 0))
        await running.handler.handle(records)
        await ledger.close(timeout=30)
    assert filtered._value.get() - before[0] == 2
    assert integrations._value.get() - before[1] == 1
    assert [r.offset for r in records if r.open == 0] == [1, 2, 3, 4]  # finished
    letters = [f"{d.record.offset} {d.stage}: {d.error}" for d in sink.letters]
    assert len(letters) == 1 and letters[0].startswith("4 decode: field 'properties'")
    assert sender.waiting == 1  # the order's event, waiting in its lane


async def test_a_call_routing_filters_still_makes_the_consent_changes_it_asks(
    tmp_path: Any,
) -> None:
    """The peek filters on type, name and integrations only: a call that may ask consent or
    list changes (a rule's `when` matches it, or its own options ask) is decoded in full, so
    that what it asks still goes although its event does not."""
    from stream.telemetry import metrics

    definitions = tmp_path / "definitions.yaml"
    definitions.write_text("events:\n  - type: track\n    event: Order Completed\n")
    consent = tmp_path / "consent.yaml"
    consent.write_text(
        "rules:\n  - when: {type: track, event: SMS Opt Out}\n    unsubscribe: [sms]\n"
    )
    settings = offline_settings(event_definitions_file=str(definitions), consent_file=str(consent))
    traits = {"email": "ada@example.com", "phone": "+14155552671"}
    base = {"timestamp": "2026-01-01T00:00:00Z", "userId": "u-1", "context": {"traits": traits}}
    values = [
        ENCODER.encode({**base, "type": "track", "messageId": "m0", "event": "SMS Opt Out"}),
        ENCODER.encode({**base, "type": "track", "messageId": "m1", "event": "Viewed Page",
                        "integrations": {"Klaviyo": {"subscribe": {"email": True}}}}),
        ENCODER.encode({**base, "type": "track", "messageId": "m2", "event": "Viewed Page"}),
    ]  # fmt: skip
    filtered = metrics.RECORDS_FILTERED.labels("track", "not_defined")
    before = filtered._value.get()
    async with assembled(settings) as (running, sink):
        sender = running.parts.sender
        records = begin(running.parts.ledger, values, ("t", 0))
        await running.handler.handle(records)
    assert filtered._value.get() - before == 3  # no event is sent (what they ask is)
    assert [r.offset for r in records if r.open == 0] == [2]  # the others wait for their changes
    waiting = {kind: lane.items for kind, lane in sender.lanes.items() if lane.items}
    assert waiting == {"unsubscribe": 1}, waiting  # the subscription waits its turn (gate)
    assert sink.letters == []  # nothing here is a dead letter
