"""Payloads real Klaviyo rejects are rejected the same way, with the offending field's pointer."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxServer
from tests.support.sandbox import (
    HEADERS,
    bulk_entry,
    bulk_event,
    bulk_events,
    event,
    inspect,
    post,
    profile,
    upsert,
)

BULK = "/data/attributes/events-bulk-create/data"


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    assert len(body["errors"]) == 1, body
    error = body["errors"][0]
    assert error["code"] == "invalid" and error["status"] == 400 and error["id"]
    return error


async def test_schema_type_violation_points_at_field(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(value="12.5"))
    assert status == 400
    error = only_error(body)
    assert error["source"]["pointer"] == "/data/attributes/value"
    assert error["title"] == "Invalid input."


async def test_missing_required_field_points_at_it(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = event()
    del body["data"]["attributes"]["metric"]["data"]["attributes"]["name"]
    status, answer, _ = await post(http, f"{sandbox.url}/api/events", body)
    assert status == 400
    assert only_error(answer)["source"]["pointer"] == "/data/attributes/metric/data/attributes/name"


async def test_nullable_fields_accept_null(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    who = profile(email="n@example.com", first_name=None, location=None, properties=None)
    body = event(who=who, time=None, value=None, value_currency=None, unique_id=None)
    status, answer, _ = await post(http, f"{sandbox.url}/api/events", body)
    assert status == 202, answer


async def test_unknown_attribute_is_rejected(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post(
        http,
        f"{sandbox.url}/api/profile-import",
        upsert(email="a@example.com", anonymous_id="anon-1"),
    )
    assert status == 400
    assert only_error(body)["source"]["pointer"] == "/data/attributes/anonymous_id"
    assert sandbox.store.profiles == {}


async def test_anonymous_id_is_fine_on_an_event_profile(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await post(
        http, f"{sandbox.url}/api/events", event(who=profile(anonymous_id="anon-1"))
    )
    assert status == 202
    [stored] = sandbox.store.profiles.values()
    assert stored.attributes["anonymous_id"] == "anon-1"


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "sp ace@example.com"])
async def test_invalid_email_is_400(
    sandbox: SandboxServer, http: aiohttp.ClientSession, email: str
) -> None:
    status, body, _ = await post(http, f"{sandbox.url}/api/profile-import", upsert(email=email))
    assert status == 400
    assert only_error(body)["source"]["pointer"] == "/data/attributes/email"


@pytest.mark.parametrize(
    "phone", ["4155552671", "+1 415 555 2671", "+1-415-555-2671", "+15555555555", "0044207946000"]
)
async def test_phone_must_be_valid_e164(
    sandbox: SandboxServer, http: aiohttp.ClientSession, phone: str
) -> None:
    body = event(who=profile(phone_number=phone))
    status, answer, _ = await post(http, f"{sandbox.url}/api/events", body)
    assert status == 400
    assert (
        only_error(answer)["source"]["pointer"]
        == "/data/attributes/profile/data/attributes/phone_number"
    )


async def test_valid_e164_phone_is_accepted(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await post(
        http, f"{sandbox.url}/api/profile-import", upsert(phone_number="+14155552671")
    )
    assert status == 201


@pytest.mark.parametrize(
    ("attributes", "pointer"),
    [
        ({"time": "1989-12-31T23:59:59Z"}, "/data/attributes/time"),
        ({"time": "2999-01-01T00:00:00Z"}, "/data/attributes/time"),
        ({"time": "yesterday"}, "/data/attributes/time"),
        ({"properties": {f"p{i}": i for i in range(401)}}, "/data/attributes/properties"),
        ({"properties": {"html": "x" * (100 * 1024 + 1)}}, "/data/attributes/properties/html"),
    ],
)
async def test_event_limits(
    sandbox: SandboxServer, http: aiohttp.ClientSession, attributes: dict[str, Any], pointer: str
) -> None:
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(**attributes))
    assert status == 400
    assert only_error(body)["source"]["pointer"] == pointer


@pytest.mark.parametrize(("length", "accepted"), [(127, True), (128, False), (129, False)])
async def test_metric_name_must_be_less_than_128_characters(
    sandbox: SandboxServer, http: aiohttp.ClientSession, length: int, accepted: bool
) -> None:
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(metric="m" * length))
    assert status == (202 if accepted else 400), body
    if not accepted:
        error = only_error(body)
        assert error["source"]["pointer"] == "/data/attributes/metric/data/attributes/name"
        assert error["detail"] == "Metric name must be less than 128 characters."
    entry = bulk_entry(profile(email="a@example.com"), bulk_event("é" * length))
    status, body, _ = await post(
        http, f"{sandbox.url}/api/event-bulk-create-jobs", bulk_events(entry)
    )
    assert status == (202 if accepted else 400), body  # characters, not UTF-8 bytes


@pytest.mark.parametrize(
    ("moment", "accepted"),
    [
        ("1990-12-31T23:59:59Z", False),  # still the year 1990
        ("1990-12-31T23:59:59.999999Z", False),
        ("1991-01-01T00:00:00Z", True),  # the first instant after the year 1990
        ("1991-01-01T00:00:01Z", True),
        ("1991-01-01T01:00:00+01:00", True),  # the same instant, written in another zone
        ("1991-01-01T00:59:59+01:00", False),
        ("1990-01-01T00:00:00Z", False),
    ],
)
async def test_event_time_must_be_after_the_year_1990(
    sandbox: SandboxServer, http: aiohttp.ClientSession, moment: str, accepted: bool
) -> None:
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(time=moment))
    assert status == (202 if accepted else 400), body
    if not accepted:
        assert only_error(body)["source"]["pointer"] == "/data/attributes/time"


async def test_external_id_length(sandbox: SandboxServer, http: aiohttp.ClientSession) -> None:
    status, body, _ = await post(
        http, f"{sandbox.url}/api/profile-import", upsert(external_id="x" * 256)
    )
    assert status == 400
    assert only_error(body)["source"]["pointer"] == "/data/attributes/external_id"
    status, _, _ = await post(
        http, f"{sandbox.url}/api/profile-import", upsert(external_id="x" * 255)
    )
    assert status == 201


async def test_profile_needs_an_identifier(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post(
        http, f"{sandbox.url}/api/events", event(who=profile(first_name="Ada"))
    )
    assert status == 400
    assert only_error(body)["source"]["pointer"] == "/data/attributes/profile/data/attributes"
    status, _, _ = await post(http, f"{sandbox.url}/api/profile-import", upsert(first_name="Ada"))
    assert status == 400


async def test_malformed_json_and_oversized_body(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sandbox.url}/api/events", data=b"{not json", headers=HEADERS) as r:
        assert r.status == 400
        assert (await r.json(content_type=None))["errors"][0]["code"] == "parse_error"
    big = event(properties={f"p{i}": "y" * 60_000 for i in range(90)})
    status, body, _ = await post(http, f"{sandbox.url}/api/events", big)
    assert status == 413
    assert body["errors"][0]["status"] == 413


async def test_bulk_event_error_names_the_bad_entry(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    good = bulk_entry(profile(email="a@example.com"), bulk_event())
    bad_phone = bulk_entry(profile(phone_number="555-0100"), bulk_event())
    bad_value = bulk_entry(profile(email="c@example.com"), bulk_event(), bulk_event(value="ten"))
    status, body, _ = await post(
        http,
        f"{sandbox.url}/api/event-bulk-create-jobs",
        bulk_events(good, bad_phone, good, bad_value),
    )
    assert status == 400
    pointers = [e["source"]["pointer"] for e in body["errors"]]
    assert pointers == [
        f"{BULK}/1/attributes/profile/data/attributes/phone_number",
        f"{BULK}/3/attributes/events/data/1/attributes/value",
    ]
    assert (await inspect(http, sandbox.url, "events"))["events"] == []


async def test_bulk_events_limit_is_1000(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    entries = [
        bulk_entry(
            profile(email=f"u{i}@example.com"),
            *[bulk_event(unique_id=f"{i}-{j}") for j in range(100)],
        )
        for i in range(10)
    ]
    status, _, _ = await post(
        http, f"{sandbox.url}/api/event-bulk-create-jobs", bulk_events(*entries)
    )
    assert status == 202
    entries.append(bulk_entry(profile(email="one-more@example.com"), bulk_event()))
    status, body, _ = await post(
        http, f"{sandbox.url}/api/event-bulk-create-jobs", bulk_events(*entries)
    )
    assert status == 400
    assert body["errors"][0]["source"]["pointer"] == BULK


async def test_bulk_import_is_validated_all_or_nothing(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    profiles = [{"type": "profile", "attributes": {"email": f"p{i}@example.com"}} for i in range(5)]
    profiles[3]["attributes"]["email"] = "broken"
    body = {
        "data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}
    }
    status, answer, _ = await post(http, f"{sandbox.url}/api/profile-bulk-import-jobs", body)
    assert status == 400
    assert (
        answer["errors"][0]["source"]["pointer"]
        == "/data/attributes/profiles/data/3/attributes/email"
    )
    assert sandbox.store.profiles == {} and sandbox.store.jobs == {}
