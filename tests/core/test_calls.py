"""What real clients send, read into a `Call`: null objects, traits in context, integrations."""

from __future__ import annotations

from typing import Any

import pytest

from stream.core.calls import normalize
from stream.core.errors import DecodeError
from stream.core.options import NO_OPTIONS, ListChanges, Subscribe


def record(**fields: Any) -> dict[str, Any]:
    return {"messageId": "m-1", "timestamp": "2026-03-01T10:00:00Z", "userId": "u-1", **fields}


@pytest.mark.parametrize("spelling", [None, "null"])
@pytest.mark.parametrize(
    ("call_type", "extra"),
    [("identify", {}), ("track", {"event": "E"}), ("page", {}), ("screen", {}),
     ("group", {"groupId": "g"}), ("alias", {"previousId": "a"})],
)  # fmt: skip
def test_null_json_objects_are_empty_objects_not_errors(
    call_type: str, extra: dict[str, Any], spelling: str | None
) -> None:
    call = normalize(
        call_type,
        record(**extra, traits=spelling, properties=spelling, context=spelling,
               integrations=spelling),
    )  # fmt: skip
    assert (call.traits, call.properties, call.context) == ({}, {}, {})
    assert call.for_klaviyo and call.options is NO_OPTIONS


def test_a_json_array_is_still_refused_where_an_object_belongs() -> None:
    with pytest.raises(DecodeError, match="'properties' must be a JSON object, got list"):
        normalize("track", record(event="E", properties="[1]"))


def test_identify_reads_context_traits_and_top_level_traits_win_per_key() -> None:
    call = normalize(
        "identify",
        record(
            traits={"email": "top@example.com", "plan": "pro"},
            context={"traits": {"email": "nested@example.com", "firstName": "Ann"}, "ip": "1"},
        ),
    )
    assert call.traits == {"email": "top@example.com", "plan": "pro", "firstName": "Ann"}
    only_nested = normalize("identify", record(context={"traits": {"email": "n@example.com"}}))
    assert only_nested.traits == {"email": "n@example.com"}


def test_context_traits_are_not_traits_of_other_calls() -> None:
    call = normalize("track", record(event="E", context={"traits": {"plan": "pro"}}))
    assert call.traits == {}


def test_screen_and_group_calls() -> None:
    screen = normalize("screen", record(name="Home", properties={"tab": 2}))
    assert (screen.type, screen.name, screen.properties) == ("screen", "Home", {"tab": 2})
    group = normalize("group", record(groupId="acme-1", traits={"name": "Acme"}))
    assert (group.group_id, group.traits) == ("acme-1", {"name": "Acme"})
    with pytest.raises(DecodeError, match="needs a 'groupId'"):
        normalize("group", record(groupId="", traits={"name": "Acme"}))


@pytest.mark.parametrize(
    ("integrations", "for_klaviyo"),
    [
        ({}, True),
        ({"All": True}, True),
        ({"All": False}, False),
        ({"Klaviyo": False}, False),
        ({"All": True, "Klaviyo": False}, False),
        ({"All": False, "Klaviyo": True}, True),
        ({"Klaviyo": True, "All": False}, True),  # key order does not matter
        ({"all": False, "KLAVIYO": True}, True),  # nor case
        ({"All": False, "Klaviyo": {"unset": ["plan"]}}, True),
        ({"Mixpanel": False}, True),  # another destination
        ({"All": False, "Mixpanel": True}, False),
    ],
)
def test_integrations_say_whether_the_call_is_for_klaviyo(
    integrations: dict[str, Any], for_klaviyo: bool
) -> None:
    assert normalize("track", record(event="E", integrations=integrations)).for_klaviyo is (
        for_klaviyo
    )


def test_integrations_as_avro_text_are_read_and_memoized_per_text() -> None:
    text = '{"All": false, "Klaviyo": {"suppress": true}}'
    first = normalize("track", record(event="E", integrations=text))
    second = normalize("track", record(event="E", messageId="m-2", integrations=text))
    assert first.for_klaviyo and first.options.suppress is True
    assert second.options is first.options


def test_every_per_call_option_is_parsed_into_the_typed_object() -> None:
    options = normalize(
        "identify",
        record(
            integrations={
                "Klaviyo": {
                    "unset": ["plan", "trial_ends"],
                    "append": {"skus": "A-1", "tags": ["x", 2, True]},
                    "subscribe": {"email": True, "list_id": "Xy12Ab"},
                    "unsubscribe": ["sms"],
                    "lists": {"add": ["L1"], "remove": ["L2"]},
                    "suppress": False,
                }
            }
        ),
    ).options
    assert options.unset == ("plan", "trial_ends")
    assert options.append == {"skus": "A-1", "tags": ["x", 2, True]}
    assert options.subscribe == Subscribe(email=True, sms=False, list_id="Xy12Ab")
    assert options.unsubscribe == ("sms",)
    assert options.lists == ListChanges(("L1",), ("L2",))
    assert options.suppress is False
    assert options.patches_profile
    single = normalize("identify", record(integrations={"Klaviyo": {"unset": "plan"}}))
    assert single.options.unset == ("plan",)  # one name, as Klaviyo's own API allows


@pytest.mark.parametrize(
    ("integrations", "message"),
    [
        ({"All": "no"}, "integrations.All: must be true or false"),
        ({"Klaviyo": "yes"}, "integrations.Klaviyo: must be true, false or an object"),
        ({"Klaviyo": {"unsett": ["a"]}}, "unknown option(s) ['unsett']"),
        ({"Klaviyo": {"unset": [1]}}, "integrations.Klaviyo.unset: must be a list of property"),
        ({"Klaviyo": {"unset": [""]}}, "integrations.Klaviyo.unset"),
        ({"Klaviyo": {"append": ["a"]}}, "integrations.Klaviyo.append: must be an object"),
        ({"Klaviyo": {"append": {"a": {"b": 1}}}}, "integrations.Klaviyo.append.a"),
        ({"Klaviyo": {"append": {"a": []}}}, "integrations.Klaviyo.append.a"),
        ({"Klaviyo": {"append": {"a": None}}}, "integrations.Klaviyo.append.a"),
        ({"Klaviyo": {"unset": ["a"], "append": {"a": 1}}}, "both unset and appended"),
        ({"Klaviyo": {"subscribe": True}}, "integrations.Klaviyo.subscribe: must be an object"),
        ({"Klaviyo": {"subscribe": {"list_id": "L"}}}, "names no channel"),
        ({"Klaviyo": {"subscribe": {"email": "yes"}}}, "subscribe.email: must be true or false"),
        ({"Klaviyo": {"subscribe": {"push": True}}}, "unknown key(s) ['push']"),
        ({"Klaviyo": {"subscribe": {"sms": True, "list_id": 7}}}, "subscribe.list_id"),
        ({"Klaviyo": {"unsubscribe": ["push"]}}, "unknown channel(s) ['push']"),
        ({"Klaviyo": {"subscribe": {"email": True}, "unsubscribe": ["email"]}}, "also subscribed"),
        ({"Klaviyo": {"lists": ["L1"]}}, "integrations.Klaviyo.lists: must be an object"),
        ({"Klaviyo": {"lists": {"add": ["L1"], "remove": ["L1"]}}}, "both added and removed"),
        ({"Klaviyo": {"lists": {"join": ["L1"]}}}, "unknown key(s) ['join']"),
        ({"Klaviyo": {"lists": {"add": "L1", "remove": [3]}}}, "lists.remove"),
        ({"Klaviyo": {"suppress": "true"}}, "integrations.Klaviyo.suppress: must be true or false"),
    ],
)
def test_a_bad_option_is_a_decode_error_naming_the_key(
    integrations: dict[str, Any], message: str
) -> None:
    with pytest.raises(DecodeError) as info:
        normalize("identify", record(integrations=integrations))
    assert message in str(info.value)


def test_integrations_that_are_not_json_are_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="field 'integrations' is not valid JSON"):
        normalize("track", record(event="E", integrations="{All: false"))
