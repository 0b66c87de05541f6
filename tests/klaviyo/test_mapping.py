"""The product's mapping table, and the payload rules Klaviyo's API imposes."""

from __future__ import annotations

import pytest

from stream.core.calls import normalize
from stream.core.errors import MappingError
from stream.core.identifiers import InvalidIdentifier, identifiers_of
from stream.klaviyo import mapping


def identify(traits: dict, user_id: str | None = "u-1") -> dict:
    call = normalize(
        "identify",
        {
            "messageId": "m",
            "timestamp": "2026-03-01T10:00:00Z",
            "userId": user_id,
            "traits": traits,
        },
    )
    ids, _dropped = identifiers_of(call, "US")
    return mapping.profile_attributes(call, ids)


def test_mapping_table_of_the_destination() -> None:
    attributes = identify(
        {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "title": "Engineer",
            "email": "  Ada@Example.COM ",
            "phone": "(415) 555-0100",
        }
    )
    assert attributes == {
        "email": "ada@example.com",
        "phone_number": "+14155550100",
        "external_id": "u-1",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "title": "Engineer",
    }


def test_phone_number_trait_and_traits_id_map_too() -> None:
    attributes = identify({"phoneNumber": "+44 20 7946 0958", "id": "crm-9"}, user_id=None)
    assert attributes == {"phone_number": "+442079460958", "external_id": "crm-9"}


def test_user_id_wins_over_traits_id() -> None:
    assert identify({"id": "crm-9"}, user_id="u-7")["external_id"] == "u-7"


def test_other_traits_become_custom_properties_with_their_types() -> None:
    attributes = identify({"plan": "pro", "seats": 3, "beta": True, "tags": ["a"], "x": {"y": 1}})
    assert attributes["properties"] == {
        "plan": "pro",
        "seats": 3,
        "beta": True,
        "tags": ["a"],
        "x": {"y": 1},
    }


def test_absent_and_null_traits_are_not_sent() -> None:
    attributes = identify({"firstName": None, "email": "a@b.co"})
    assert "first_name" not in attributes and "properties" not in attributes


def test_national_phone_uses_the_default_region_setting() -> None:
    call = normalize(
        "identify",
        {"messageId": "m", "timestamp": "2026-03-01T10:00:00Z", "traits": {"phone": "030 901820"}},
    )
    assert identifiers_of(call, "DE")[0].phone_number == "+4930901820"


@pytest.mark.parametrize(
    ("traits", "field", "kind"),
    [
        ({"email": "not-an-email"}, "email", "invalid"),
        ({"phone": "call me"}, "phone", "invalid"),
        ({"phone": "+1 555 0100"}, "phone", "not_valid_for_region"),
        ({"email": "a@" + "b" * 300 + ".io"}, "email", "too_long"),
    ],
)
def test_an_invalid_identifier_is_dropped_and_named_without_its_value(
    traits: dict, field: str, kind: str
) -> None:
    call = normalize(
        "identify",
        {"messageId": "m", "timestamp": "2026-03-01T10:00:00Z", "userId": "u1", "traits": traits},
    )
    ids, [dropped] = identifiers_of(call, "US")
    assert ids.external_id == "u1" and not ids.email and not ids.phone_number
    assert isinstance(dropped, InvalidIdentifier)
    assert (dropped.field, dropped.kind) == (field, kind)
    for value in traits.values():
        assert value not in str(dropped)


def test_track_maps_to_an_event_with_unique_id_time_and_value() -> None:
    call = normalize(
        "track",
        {
            "messageId": "msg-42",
            "timestamp": "2026-03-01T10:00:00.734+02:00",
            "userId": "u-1",
            "event": "Ordered Product",
            "properties": '{"revenue": 29.5, "currency": "EUR", "gift": false,'
            ' "products": [{"sku": "A", "quantity": 2}]}',
        },
    )
    event = mapping.event_attributes(call)
    assert event == {
        "properties": {
            "revenue": 29.5,
            "currency": "EUR",
            "gift": False,
            "products": [{"sku": "A", "quantity": 2}],
        },
        "time": "2026-03-01T08:00:00+00:00",
        "unique_id": "msg-42",
        "value": 29.5,
        "value_currency": "EUR",
        "metric": {"data": {"type": "metric", "attributes": {"name": "Ordered Product"}}},
    }


def _track(timestamp: str = "2026-01-01T00:00:00Z", event: str = "E") -> dict:
    call = normalize(
        "track", {"messageId": "m", "timestamp": timestamp, "userId": "u", "event": event}
    )
    return mapping.event_attributes(call)


@pytest.mark.parametrize("timestamp", ["1989-12-31T23:59:59Z", "2999-01-01T00:00:00Z", "yesterday"])
def test_event_time_outside_klaviyo_window_is_refused(timestamp: str) -> None:
    with pytest.raises(MappingError):
        _track(timestamp)


@pytest.mark.parametrize(
    ("timestamp", "sent"),
    [
        ("1990-12-31T23:59:59Z", None),  # Klaviyo: "after the year 1990"
        ("1990-12-31T23:59:59.999Z", None),
        ("1990-01-01T00:00:00Z", None),
        ("1991-01-01T00:00:00Z", "1991-01-01T00:00:00+00:00"),
        ("1991-01-01T00:00:01Z", "1991-01-01T00:00:01+00:00"),
        ("1991-01-01T00:00:00.5Z", "1991-01-01T00:00:00+00:00"),
        ("1991-01-01T01:00:00+01:00", "1991-01-01T00:00:00+00:00"),  # the slow path
        ("1991-01-01T00:59:59+01:00", None),
    ],
)
def test_earliest_event_time_is_the_first_instant_after_1990(
    timestamp: str, sent: str | None
) -> None:
    if sent is None:
        with pytest.raises(MappingError, match="before 1990"):
            _track(timestamp)
    else:
        assert _track(timestamp)["time"] == sent


@pytest.mark.parametrize(("length", "accepted"), [(127, True), (128, False), (129, False)])
def test_metric_name_must_be_less_than_128_characters(length: int, accepted: bool) -> None:
    if accepted:
        name = _track(event="x" * length)["metric"]["data"]["attributes"]["name"]
        assert len(name) == length
    else:
        with pytest.raises(MappingError, match="1..127 characters"):
            _track(event="x" * length)
