"""Calls written by the real Segment and RudderStack Python libraries, published with `produce`
through the real broker (both wire formats), decoded into `Call`s and mapped as
docs/what-is-sent.md says."""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from jsonschema import Draft202012Validator

from stream.core.calls import Call
from stream.core.identifiers import identifiers_of
from stream.intake.decode import Decoder, LocalDecoder, RegistryDecoder
from stream.klaviyo import mapping
from stream.klaviyo.commerce import event_specs
from stream.local.sandbox.config import OPENAPI_DIR
from stream.local.sandbox.spec import load_operations
from stream.ops.produce import Encoder, publish_file
from stream.rules.route import EventDefinition, Router, Selector
from tests.support import read_topic
from tests.support.kafka import wait_for_leaders
from tests.support.sdk import ADDRESS, LIBRARIES, calls, email_of, phone_of, user_of

ROUTER = Router()
PROFILE = {"email": "someone@example.com"}


@cache
def validator(operation: str) -> Draft202012Validator:
    found = load_operations(OPENAPI_DIR)[operation].validator
    assert found is not None
    return found


def assert_valid(operation: str, body: dict[str, Any]) -> None:
    errors = [e.message for e in validator(operation).iter_errors(body)]
    assert not errors, errors


def events_of(call: Call) -> list[dict[str, Any]]:
    """The events the pipeline makes of one call (route names the metric, commerce shapes)."""
    assert ROUTER.reason_to_skip(call) is None
    specs = event_specs(call, ROUTER.metric_name(call), ecommerce=True)
    assert all(s.error is None and s.attributes is not None for s in specs)
    events = [s.attributes for s in specs if s.attributes is not None]
    assert_valid("bulk_create_events", mapping.bulk_events_body([(PROFILE, events)]))
    return events


def metric(event: dict[str, Any]) -> str:
    return str(event["metric"]["data"]["attributes"]["name"])


@pytest.fixture(scope="module", params=["local", "registry"])
def published(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Call]:
    """Both libraries' calls through `produce --input` (JSON lines) and the broker, decoded;
    once per wire format for the whole module."""
    topic = f"sdk-calls-{request.param}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    wait_for_leaders(admin, topic, 1, 30)
    messages = [m for library in LIBRARIES for m in calls(library).values()]
    path = tmp_path_factory.mktemp("sdk") / "sdk.jsonl"
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    decoder: Decoder = LocalDecoder()
    encoder = Encoder()
    if request.param == "registry":
        registry = SchemaRegistryClient.new_client({"url": f"mock://{topic}"})
        encoder, decoder = Encoder(registry=registry, topic=topic), RegistryDecoder(registry)
    report = publish_file({"bootstrap.servers": kafka_bootstrap}, topic, path, encoder)
    assert (report.published, report.refused, dict(report.filled)) == (len(messages), [], {})
    records = read_topic(kafka_bootstrap, topic, len(messages), timeout=30)
    assert len(records) == len(messages)
    return {call.message_id: call for call in (decoder.decode(r.value()) for r in records)}


def expected_profile(library: str) -> dict[str, Any]:
    return {
        "email": email_of(library),
        "phone_number": phone_of(library)[1],
        "external_id": user_of(library),
        "first_name": "Ada",
        "last_name": "Lovelace",
        "title": "Engineer",
        "organization": "Initech",
        "location": {
            "address1": ADDRESS["street"],
            "city": "London",
            "region": "Greater London",
            "zip": "NW1 6XE",
            "country": "United Kingdom",
            "latitude": 51.5238,
            "longitude": -0.1586,
            "timezone": "Europe/London",
            "ip": "203.0.113.7",
        },
        "properties": {"plan": "pro", "logins": 7,
                       "company": {"id": "c-42", "industry": "Software"}},
    }  # fmt: skip


@pytest.mark.parametrize("library", LIBRARIES)
def test_identify_maps_to_one_profile_wherever_the_library_put_the_traits(
    published: dict[str, Call], library: str
) -> None:
    call = published[f"{library}-identify"]
    where = call.context.get("traits")
    assert (where is None) is (library == "segment")  # rudder: only in context.traits
    attributes = mapping.profile_attributes(call, identifiers_of(call, "US")[0])
    assert attributes == expected_profile(library)
    assert_valid("create_or_update_profile", mapping.profile_import_body(attributes))


@pytest.mark.parametrize("library", LIBRARIES)
def test_per_call_options_ride_in_integrations(published: dict[str, Call], library: str) -> None:
    call = published[f"{library}-identify-patch"]
    attributes = mapping.profile_attributes(call, identifiers_of(call, "US")[0])
    assert "properties" not in attributes  # `trial` is unset, so not also set
    meta = mapping.profile_meta(call.options)
    assert meta == {"patch_properties": {"unset": ["trial"], "append": {"skus": ["G-32"]}}}
    assert_valid("create_or_update_profile", mapping.profile_import_body(attributes, meta))


@pytest.mark.parametrize("library", LIBRARIES)
def test_ecommerce_tracks_become_klaviyos_standard_metrics(
    published: dict[str, Call], library: str
) -> None:
    placed, *lines = events_of(published[f"{library}-order"])
    assert [metric(placed)] + [metric(e) for e in lines] == [
        "Placed Order", "Ordered Product", "Ordered Product"
    ]  # fmt: skip
    assert [e["unique_id"] for e in (placed, *lines)] == [
        f"{library}-order", f"{library}-order:0", f"{library}-order:1"
    ]  # fmt: skip
    assert (placed["value"], placed["value_currency"]) == (44.0, "USD")  # revenue first
    assert placed["properties"]["ItemNames"] == ["Winnie the Pooh", "Monopoly"]
    assert placed["time"] == "2026-03-01T10:00:00+00:00"
    assert [e["value"] for e in lines] == [29.97, 19.0]
    [viewed] = events_of(published[f"{library}-viewed"])
    assert metric(viewed) == "Viewed Product"
    assert viewed["properties"]["ProductName"] == "Winnie the Pooh"


@pytest.mark.parametrize("library", LIBRARIES)
def test_track_page_and_screen_are_events_and_integrations_can_turn_one_off(
    published: dict[str, Call], library: str
) -> None:
    [signup] = events_of(published[f"{library}-signup"])
    assert (metric(signup), signup["value"], signup["value_currency"]) == ("Signed Up", 12, "EUR")
    [page] = events_of(published[f"{library}-page"])
    assert metric(page) == "Viewed Page"
    assert page["properties"] == {"path": "/pricing", "url": "https://shop.example.com/pricing"}
    [screen] = events_of(published[f"{library}-screen"])
    assert (metric(screen), screen["properties"]) == ("Viewed Screen", {"tab": "feed"})
    assert ROUTER.reason_to_skip(published[f"{library}-hidden"]) == "integrations"


@pytest.mark.parametrize("library", LIBRARIES)
def test_group_is_sent_only_when_enabled_and_alias_only_links(
    published: dict[str, Call], library: str
) -> None:
    group = published[f"{library}-group"]
    assert (group.type, group.group_id, group.traits) == (
        "group", "acme-1", {"name": "Acme", "employees": 50}
    )  # fmt: skip
    assert ROUTER.reason_to_skip(group) == "not_defined"
    enabled = Router(definitions=(EventDefinition(Selector("group")),))
    assert enabled.reason_to_skip(group) is None
    assert mapping.group_profile_attributes(group) == {"organization": "Acme"}
    alias = published[f"{library}-alias"]
    assert (alias.previous_id, alias.user_id) == (f"{library}-anon-1", user_of(library))
    assert ROUTER.reason_to_skip(alias) == "identity_only"
