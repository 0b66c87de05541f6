"""Profiles as clients describe them: location, company, per-call patches, groups; events' value."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from stream.core.calls import Call, normalize
from stream.core.identifiers import identifiers_of
from stream.klaviyo import mapping
from stream.local.sandbox.config import OPENAPI_DIR
from stream.local.sandbox.spec import load_operations
from stream.rules.hipaa import HipaaPolicy
from stream.rules.transform import Transformer


def identify(traits: dict[str, Any], **fields: Any) -> Call:
    return normalize(
        "identify",
        {"messageId": "m", "timestamp": "2026-03-01T10:00:00Z", "userId": "u-1",
         "traits": traits, **fields},
    )  # fmt: skip


def profile(call: Call) -> dict[str, Any]:
    return mapping.profile_attributes(call, identifiers_of(call, "US")[0])


@cache
def validator(operation: str) -> Draft202012Validator:
    found = load_operations(OPENAPI_DIR)[operation].validator
    assert found is not None
    return found


def assert_valid(operation: str, body: dict[str, Any]) -> None:
    errors = [e.message for e in validator(operation).iter_errors(body)]
    assert not errors, errors


ADDRESS = {"street": "6th St", "street2": "Apt 4", "city": "San Francisco", "state": "CA",
           "postalCode": 94103, "country": "USA"}  # fmt: skip


def test_address_and_context_fill_klaviyos_location() -> None:
    call = identify(
        {"email": "ann@example.com", "address": ADDRESS},
        context={"ip": "203.0.113.7", "timezone": "America/Los_Angeles",
                 "location": {"latitude": 37.7749, "longitude": "-122.4194", "speed": 0}},
    )  # fmt: skip
    attributes = profile(call)
    assert attributes["location"] == {
        "address1": "6th St",
        "address2": "Apt 4",
        "city": "San Francisco",
        "region": "CA",
        "zip": "94103",  # Klaviyo's zip is a string
        "country": "USA",
        "latitude": 37.7749,
        "longitude": "-122.4194",
        "timezone": "America/Los_Angeles",
        "ip": "203.0.113.7",
    }
    assert "properties" not in attributes  # the address is not also a custom property
    assert_valid("create_or_update_profile", mapping.profile_import_body(attributes))


def test_address_keys_klaviyo_has_no_field_for_stay_custom_and_empty_values_are_not_sent() -> None:
    attributes = profile(identify({"address": {"city": "Lyon", "zip": "", "floor": 3,
                                               "country": None}}))  # fmt: skip
    assert attributes["location"] == {"city": "Lyon"}
    assert attributes["properties"] == {"address": {"floor": 3}}
    assert "location" not in profile(identify({"address": {}}))
    assert "location" not in profile(identify({"plan": "pro"}, context={"locale": "fr"}))


def test_a_flag_or_object_in_an_address_field_is_not_a_location() -> None:
    attributes = profile(identify({"address": {"city": True, "zip": {"code": 1}}}))
    assert "location" not in attributes
    assert attributes["properties"] == {"address": {"city": True, "zip": {"code": 1}}}


def test_hipaa_mode_never_lets_the_ip_reach_the_location() -> None:
    policy = HipaaPolicy(
        allowed_traits=frozenset({"email", "address"}), allowed_context=frozenset({"timezone"})
    )
    call = identify(
        {"email": "ann@example.com", "address": {"city": "Paris", "note": "10.1.2.3"}},
        context={"ip": "203.0.113.7", "timezone": "Europe/Paris"},
    )
    attributes = profile(Transformer(hipaa=policy)(call))
    assert attributes["location"] == {"city": "Paris", "timezone": "Europe/Paris"}
    assert "203.0.113.7" not in str(attributes)


def test_company_object_fills_organization_and_keeps_the_rest_as_custom_properties() -> None:
    company = {"name": "Initech", "id": "c-42", "industry": "Software", "employees": 120,
               "plan": None}  # fmt: skip
    attributes = profile(identify({"company": company}))
    assert attributes["organization"] == "Initech"
    assert attributes["properties"] == {
        "company": {"id": "c-42", "industry": "Software", "employees": 120}
    }
    assert "{" not in attributes["organization"]  # no longer the object's repr
    assert profile(identify({"company": "Acme"}))["organization"] == "Acme"
    nameless = profile(identify({"company": {"id": "c-1"}}))
    assert "organization" not in nameless and nameless["properties"] == {"company": {"id": "c-1"}}


def test_an_explicit_organization_wins_over_the_companys_name() -> None:
    for traits in ({"organization": "Own", "company": {"name": "Other"}},
                   {"company": {"name": "Other"}, "organization": "Own"}):  # fmt: skip
        assert profile(identify(traits))["organization"] == "Own"


def test_per_call_unset_and_append_become_patch_properties_and_unset_keys_are_not_set() -> None:
    call = identify(
        {"email": "ann@example.com", "plan": "trial", "seats": 2},
        integrations={"Klaviyo": {"unset": ["plan", "coupon"], "append": {"skus": ["A-1", "B-2"],
                                                                          "visits": 3}}},
    )  # fmt: skip
    attributes = profile(call)
    assert attributes["properties"] == {"seats": 2}  # plan: unset, so not also set
    meta = mapping.profile_meta(call.options)
    assert meta == {
        "patch_properties": {"unset": ["plan", "coupon"], "append": {"skus": ["A-1", "B-2"],
                                                                     "visits": 3}}
    }  # fmt: skip
    body = mapping.profile_import_body(attributes, meta)
    assert body["data"]["meta"] == meta
    assert_valid("create_or_update_profile", body)
    assert_valid("create_client_profile", body)
    bulk = mapping.bulk_profiles_body([attributes, {"email": "bo@example.com"}], [meta, None])
    assert "meta" not in bulk["data"]["attributes"]["profiles"]["data"][1]
    assert_valid("bulk_import_profiles", bulk)


def test_without_options_there_is_no_meta_and_bodies_are_unchanged() -> None:
    call = identify({"email": "ann@example.com"})
    assert mapping.profile_meta(call.options) is None
    assert mapping.profile_import_body({"email": "a@b.co"}) == {
        "data": {"type": "profile", "attributes": {"email": "a@b.co"}}
    }
    assert mapping.bulk_profiles_body([{"email": "a@b.co"}]) == mapping.bulk_profiles_body(
        [{"email": "a@b.co"}], [None]
    )


def test_only_unset_gives_a_patch_with_unset_alone() -> None:
    call = identify({}, integrations={"Klaviyo": {"unset": "plan"}})
    assert mapping.profile_meta(call.options) == {"patch_properties": {"unset": ["plan"]}}


def test_an_enabled_group_call_names_the_organization() -> None:
    def group(traits: dict[str, Any]) -> Call:
        return normalize("group", {"messageId": "g", "timestamp": "2026-03-01T10:00:00Z",
                                   "userId": "u", "groupId": "acme", "traits": traits})  # fmt: skip

    assert mapping.group_profile_attributes(group({"name": "Acme", "plan": "pro"})) == {
        "organization": "Acme"
    }
    assert mapping.group_profile_attributes(group({"plan": "pro"})) is None
    assert mapping.group_profile_attributes(group({"name": {"legal": "Acme"}})) is None


def track(properties: dict[str, Any]) -> dict[str, Any]:
    call = normalize("track", {"messageId": "m", "timestamp": "2026-03-01T10:00:00Z",
                               "userId": "u", "event": "E", "properties": properties})  # fmt: skip
    return mapping.event_attributes(call)


@pytest.mark.parametrize(
    ("properties", "value"),
    [
        ({"revenue": 25, "total": 30, "value": 35}, 25),
        ({"total": 30, "value": 35}, 30),
        ({"value": 35}, 35),
        ({"revenue": "25", "total": 30.5}, 30.5),  # not a number: the next one
        ({"revenue": True, "value": 2}, 2),  # a flag is not an amount
        ({"price": 9.99}, None),
    ],
)
def test_value_follows_segments_precedence(properties: dict[str, Any], value: Any) -> None:
    attributes = track({**properties, "currency": "EUR"})
    assert attributes.get("value") == value
    assert ("value_currency" in attributes) is (value is not None)
