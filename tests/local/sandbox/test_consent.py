"""Subscribe, unsubscribe and the client subscription: Klaviyo's consent rules, one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from stream.local.sandbox.consent import Suppression
from tests.support import wait_until
from tests.support.sandbox import (
    consent_job,
    consenting,
    create,
    get,
    inspect,
    post,
    profile_of,
    withdrawing,
)

SUBSCRIBE = "/api/profile-subscription-bulk-create-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
ENTRY = "/data/attributes/profiles/data"
CLIENT_HEADERS = {"revision": "2026-07-15", "Content-Type": "application/vnd.api+json"}
LISTS = (SeedList("NEWS01", "Newsletter"), SeedList("DOUBLE", "Double opt-in", double_opt_in=True))
PAST = "2021-06-01T12:00:00+00:00"


@pytest.fixture
async def account() -> AsyncIterator[SandboxServer]:
    """A sandbox with a single and a double opt-in list."""
    async with SandboxServer(SandboxConfig(lists=LISTS)) as server:
        yield server


def _error(body: dict[str, Any]) -> tuple[int, str]:
    [error] = body["errors"]
    return error["status"], error["source"].get("pointer") or error["source"].get("parameter")


async def _consent(http: aiohttp.ClientSession, base: str, **identifier: str) -> dict[str, Any]:
    return dict((await profile_of(http, base, **identifier))["consent"])


async def test_subscribe_creates_the_profile_and_records_consent_per_channel(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = consent_job(
        "create",
        consenting("ada@example.com", "+14155552671", channels=("email", "sms")),
        list_id="NEWS01",
        custom_source="signup form",
    )
    status, answer, headers = await post(http, f"{account.url}{SUBSCRIBE}", body)
    assert (status, answer) == (202, None)
    assert headers["RateLimit-Limit"] == "750"  # 75/s, 750/m
    ada = await profile_of(http, account.url, email="ada@example.com")
    assert ada["attributes"]["phone_number"] == "+14155552671"
    for topic in ("email.marketing", "sms.marketing"):
        consent = ada["consent"][topic]
        assert consent["state"] == "subscribed" and consent["consented_at"] is not None
        assert consent["custom_source"] == "signup form" and consent["historical"] is False
        assert ada["can_receive"][topic] is True
    assert ada["lists"] == ["NEWS01"]
    # the Klaviyo view of the same profile
    status, found, _ = await get(
        http,
        f"{account.url}/api/profiles",
        {
            "filter": 'equals(email,"ada@example.com")',
            "additional-fields[profile]": "subscriptions",
        },
    )
    subscriptions = found["data"][0]["attributes"]["subscriptions"]
    assert subscriptions["email"]["marketing"]["consent"] == "SUBSCRIBED"
    assert subscriptions["email"]["marketing"]["can_receive_email_marketing"] is True
    assert subscriptions["sms"]["marketing"]["can_receive_sms_marketing"] is True
    status, plain, _ = await get(http, f"{account.url}/api/profiles")
    assert "subscriptions" not in plain["data"][0]["attributes"]  # only when asked for


async def test_an_existing_profile_is_matched_not_duplicated(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    known = await create(http, account.url, email="ada@example.com", first_name="Ada")
    body = consent_job("create", consenting("ADA@example.com"))
    assert (await post(http, f"{account.url}{SUBSCRIBE}", body))[0] == 202
    by_id = consent_job("create", consenting(channels=("email",), profile_id=known))
    assert (await post(http, f"{account.url}{SUBSCRIBE}", by_id))[0] == 202  # email on profile
    [only] = (await inspect(http, account.url, "profiles"))["profiles"]
    assert only["id"] == known and only["consent"]["email.marketing"]["state"] == "subscribed"


async def test_double_opt_in_list_leaves_consent_pending_until_confirmed(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = consent_job("create", consenting("ada@example.com"), list_id="DOUBLE")
    assert (await post(http, f"{account.url}{SUBSCRIBE}", body))[0] == 202
    ada = await profile_of(http, account.url, email="ada@example.com")
    consent = ada["consent"]["email.marketing"]
    assert (consent["state"], consent["double_opt_in"]) == ("pending", True)
    assert consent["consented_at"] is None and ada["can_receive"]["email.marketing"] is False
    assert ada["lists"] == []  # not on the list before confirming
    lists = {m["id"]: m for m in (await inspect(http, account.url, "lists"))["lists"]}
    assert lists["DOUBLE"]["pending"] == [ada["id"]] and lists["DOUBLE"]["members"] == []
    status, found, _ = await get(
        http,
        f"{account.url}/api/profiles",
        {"additional-fields[profile]": "subscriptions"},
    )
    assert found["data"][0]["attributes"]["subscriptions"]["email"]["marketing"]["consent"] == (
        "NEVER_SUBSCRIBED"
    )
    confirm = {"profile_id": ada["id"], "channel": "email"}
    async with http.post(f"{account.url}/sandbox/confirm", json=confirm) as r:
        assert r.status == 200
    ada = await profile_of(http, account.url, email="ada@example.com")
    assert ada["consent"]["email.marketing"]["state"] == "subscribed"
    assert ada["lists"] == ["DOUBLE"] and ada["can_receive"]["email.marketing"] is True
    async with http.post(f"{account.url}/sandbox/confirm", json=confirm) as r:
        assert r.status == 409  # nothing pending any more


async def test_historical_import_skips_double_opt_in_and_keeps_the_given_time(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = consent_job(
        "create",
        consenting("ada@example.com", consented_at=PAST),
        list_id="DOUBLE",
        historical_import=True,
    )
    assert (await post(http, f"{account.url}{SUBSCRIBE}", body))[0] == 202
    ada = await profile_of(http, account.url, email="ada@example.com")
    consent = ada["consent"]["email.marketing"]
    assert (consent["state"], consent["historical"]) == ("subscribed", True)
    assert consent["consented_at"] == PAST and ada["lists"] == ["DOUBLE"]


@pytest.mark.parametrize(
    ("historical", "consented_at", "detail"),
    [
        (True, None, "required"),
        (True, "2999-01-01T00:00:00Z", "in the past"),
        (True, "last week", "ISO 8601"),
        (False, PAST, "only be set when historical_import is true"),
        (None, PAST, "only be set when historical_import is true"),
    ],
)
async def test_historical_import_rules(
    account: SandboxServer,
    http: aiohttp.ClientSession,
    historical: bool | None,
    consented_at: str | None,
    detail: str,
) -> None:
    extra = {} if historical is None else {"historical_import": historical}
    good = consenting("bob@example.com", consented_at=PAST if historical else None)
    bad = consenting("ada@example.com", consented_at=consented_at)
    body = consent_job("create", good, bad, **extra)
    status, answer, _ = await post(http, f"{account.url}{SUBSCRIBE}", body)
    assert status == 400
    [error] = answer["errors"]
    pointer = f"{ENTRY}/1/attributes/subscriptions/email/marketing/consented_at"
    assert error["source"]["pointer"] == pointer and detail in error["detail"]
    assert (await inspect(http, account.url, "profiles"))["profiles"] == []  # nothing applied


@pytest.mark.parametrize(
    ("entry", "pointer"),
    [
        (consenting(phone_number="4155552671", channels=("sms",)), "phone_number"),
        (consenting(phone_number="+1 415 555 2671", channels=("sms",)), "phone_number"),
        (consenting("ada@example.com", channels=("sms",)), "phone_number"),  # SMS needs a phone
        (consenting(phone_number="+14155552671", channels=("email",)), "email"),
        (consenting("not-an-email"), "email"),
        (consenting("ada@example.com", channels=()), "subscriptions"),
    ],
)
async def test_each_channel_needs_its_valid_identifier(
    account: SandboxServer, http: aiohttp.ClientSession, entry: dict[str, Any], pointer: str
) -> None:
    body = consent_job("create", consenting("ok@example.com"), entry)
    status, answer, _ = await post(http, f"{account.url}{SUBSCRIBE}", body)
    assert status == 400
    assert _error(answer) == (400, f"{ENTRY}/1/attributes/{pointer}")
    assert (await inspect(http, account.url, "profiles"))["profiles"] == []


async def test_every_bad_profile_is_reported_and_schema_errors_too(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    bad_schema = consenting("x@example.com")
    bad_schema["attributes"]["subscriptions"]["email"]["marketing"]["consent"] = "MAYBE"
    body = consent_job(
        "create",
        consenting("not-an-email"),
        consenting("fine@example.com"),
        bad_schema,
        consenting("y@example.com", channels=("sms",)),
    )
    status, answer, _ = await post(http, f"{account.url}{SUBSCRIBE}", body)
    assert status == 400
    pointers = [e["source"]["pointer"] for e in answer["errors"]]
    assert pointers == [
        f"{ENTRY}/0/attributes/email",
        f"{ENTRY}/2/attributes/subscriptions/email/marketing/consent",
        f"{ENTRY}/3/attributes/phone_number",
    ]


async def test_subscribe_limits_and_unknown_list_or_profile(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    url = f"{account.url}{SUBSCRIBE}"
    many = [consenting(f"u{i}@example.com") for i in range(1001)]
    status, answer, _ = await post(http, url, consent_job("create", *many))
    assert status == 400 and _error(answer) == (400, ENTRY)
    status, _, _ = await post(http, url, consent_job("create", *many[:1000]))
    assert status == 202
    status, answer, _ = await post(http, url, consent_job("create", many[0], list_id="NOPE00"))
    assert status == 404 and _error(answer) == (404, "/data/relationships/list/data/id")
    ghost = consent_job("create", consenting(profile_id="01GHOST"))
    status, answer, _ = await post(http, url, ghost)
    assert status == 400 and _error(answer) == (400, f"{ENTRY}/0/id")


async def test_subscribing_lifts_unsubscribe_and_user_suppressions_but_not_bounces(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    await post(http, f"{base}{UNSUBSCRIBE}", consent_job("delete", withdrawing("ada@example.com")))
    store = account.store
    [ada] = store.profiles.values()
    ada.suppressions.append(Suppression("HARD_BOUNCE", "2024-01-01T00:00:00+00:00"))
    ada.suppressions.append(Suppression("USER_SUPPRESSED", "2024-01-01T00:00:00+00:00"))
    before = {s["reason"] for s in (await profile_of(http, base, id=ada.id))["suppressions"]}
    assert before == {"UNSUBSCRIBE", "HARD_BOUNCE", "USER_SUPPRESSED"}
    await post(http, f"{base}{SUBSCRIBE}", consent_job("create", consenting("ada@example.com")))
    after = await profile_of(http, base, id=ada.id)
    assert [s["reason"] for s in after["suppressions"]] == ["HARD_BOUNCE"]
    assert after["consent"]["email.marketing"]["state"] == "subscribed"
    assert after["can_receive"]["email.marketing"] is False  # the bounce still blocks email


async def test_unsubscribe_without_a_list_is_global(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    both = consenting("ada@example.com", "+14155552671", channels=("email", "sms"))
    await post(http, f"{base}{SUBSCRIBE}", consent_job("create", both, list_id="NEWS01"))
    body = consent_job("delete", withdrawing(phone_number="+14155552671", channels=("sms",)))
    status, answer, headers = await post(http, f"{base}{UNSUBSCRIBE}", body)
    assert (status, answer) == (202, None) and headers["RateLimit-Limit"] == "750"
    ada = await profile_of(http, base, email="ada@example.com")
    assert ada["consent"]["sms.marketing"]["state"] == "unsubscribed"
    assert ada["consent"]["email.marketing"]["state"] == "subscribed"  # only what was named
    assert ada["suppressions"] == [] and ada["lists"] == ["NEWS01"]
    await post(http, f"{base}{UNSUBSCRIBE}", consent_job("delete", withdrawing("ada@example.com")))
    ada = await profile_of(http, base, email="ada@example.com")
    assert ada["consent"]["email.marketing"]["state"] == "unsubscribed"
    assert [(s["reason"], s["list_id"]) for s in ada["suppressions"]] == [("UNSUBSCRIBE", None)]


async def test_unsubscribe_from_a_list_a_profile_is_not_on_is_global(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    """Klaviyo's warning, modelled: "Profiles not in the specified list will be globally
    unsubscribed". A member is only taken off the list; a non-member loses consent."""
    base = account.url
    member = consenting("member@example.com")
    outsider = consenting("outsider@example.com")
    await post(http, f"{base}{SUBSCRIBE}", consent_job("create", member, list_id="NEWS01"))
    await post(http, f"{base}{SUBSCRIBE}", consent_job("create", outsider))
    body = consent_job(
        "delete",
        withdrawing("member@example.com"),
        withdrawing("outsider@example.com"),
        list_id="NEWS01",
    )
    assert (await post(http, f"{base}{UNSUBSCRIBE}", body))[0] == 202
    kept = await profile_of(http, base, email="member@example.com")
    assert kept["consent"]["email.marketing"]["state"] == "subscribed"
    assert kept["lists"] == [] and kept["can_receive"]["email.marketing"] is True
    assert [(s["reason"], s["list_id"]) for s in kept["suppressions"]] == [
        ("UNSUBSCRIBE", "NEWS01")
    ]
    gone = await profile_of(http, base, email="outsider@example.com")
    assert gone["consent"]["email.marketing"]["state"] == "unsubscribed"
    assert gone["can_receive"]["email.marketing"] is False
    [job] = [
        j for j in (await inspect(http, base, "consent-jobs"))["jobs"] if j["kind"] == "unsubscribe"
    ]
    assert [r["result"] for r in job["results"]] == ["removed from list", "unsubscribed globally"]


async def test_unsubscribe_of_an_unknown_email_creates_an_unsubscribed_profile(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = consent_job("delete", withdrawing("new@example.com"))
    assert (await post(http, f"{account.url}{UNSUBSCRIBE}", body))[0] == 202
    new = await profile_of(http, account.url, email="new@example.com")
    assert new["consent"]["email.marketing"]["state"] == "unsubscribed"
    # a later subscribe (say, by another integration) is a new, explicit consent
    await post(
        http, f"{account.url}{SUBSCRIBE}", consent_job("create", consenting("new@example.com"))
    )
    again = await profile_of(http, account.url, email="new@example.com")
    assert again["consent"]["email.marketing"]["state"] == "subscribed"


async def test_unsubscribe_limits(account: SandboxServer, http: aiohttp.ClientSession) -> None:
    url = f"{account.url}{UNSUBSCRIBE}"
    many = [withdrawing(f"u{i}@example.com") for i in range(101)]
    status, answer, _ = await post(http, url, consent_job("delete", *many))
    assert status == 400 and _error(answer) == (400, ENTRY)
    assert (await post(http, url, consent_job("delete", *many[:100])))[0] == 202
    status, answer, _ = await post(
        http, url, consent_job("delete", withdrawing(phone_number="555", channels=("sms",)))
    )
    assert status == 400 and _error(answer) == (400, f"{ENTRY}/0/attributes/phone_number")
    status, answer, _ = await post(http, url, consent_job("delete", many[0], list_id="NOPE00"))
    assert status == 404


async def test_a_merge_keeps_the_newer_consent_and_moves_list_membership(
    http: aiohttp.ClientSession,
) -> None:
    async with SandboxServer(SandboxConfig(lists=LISTS, merge_delay_seconds=0)) as sb:
        base = sb.url
        await post(
            http,
            f"{base}{SUBSCRIBE}",
            consent_job("create", consenting("ada@example.com"), list_id="NEWS01"),
        )
        dest = await create(http, base, external_id="u-1")
        await post(
            http, f"{base}{UNSUBSCRIBE}", consent_job("delete", withdrawing("ada@example.com"))
        )
        source = (await profile_of(http, base, email="ada@example.com"))["id"]
        merge = {
            "data": {
                "type": "profile-merge",
                "id": dest,
                "relationships": {"profiles": {"data": [{"type": "profile", "id": source}]}},
            }
        }
        assert (await post(http, f"{base}/api/profile-merge", merge))[0] == 201

        async def merged() -> bool:
            return (await inspect(http, base, "stats"))["merges"] == 1

        await wait_until(merged, timeout=30, what="the merge", poll=0.02)
        [one] = (await inspect(http, base, "profiles"))["profiles"]
        assert one["id"] == dest and one["lists"] == ["NEWS01"]
        assert one["consent"]["email.marketing"]["state"] == "unsubscribed"  # the newer record
        assert [s["reason"] for s in one["suppressions"]] == ["UNSUBSCRIBE"]


async def test_client_subscription_uses_the_public_key_and_defaults_to_marketing(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    url = f"{account.url}/client/subscriptions"
    body: dict[str, Any] = {
        "data": {
            "type": "subscription",
            "attributes": {
                "custom_source": "footer",
                "profile": {
                    "data": {
                        "type": "profile",
                        "attributes": {
                            "email": "ada@example.com",
                            "phone_number": "+14155552671",
                            "first_name": "Ada",
                        },
                    }
                },
            },
            "relationships": {"list": {"data": {"type": "list", "id": "NEWS01"}}},
        }
    }
    status, answer, headers = await post(http, f"{url}?company_id=SBXPUB", body, CLIENT_HEADERS)
    assert (status, answer) == (202, None) and headers["RateLimit-Limit"] == "750"
    ada = await profile_of(http, account.url, email="ada@example.com")
    assert ada["attributes"]["first_name"] == "Ada" and ada["lists"] == ["NEWS01"]
    assert ada["consent"]["email.marketing"]["state"] == "subscribed"
    assert ada["consent"]["sms.marketing"]["state"] == "subscribed"
    assert ada["consent"]["email.marketing"]["method"] == "client_subscription"
    # no company_id, or a private key instead of one, is refused
    status, answer, _ = await post(http, url, body, CLIENT_HEADERS)
    assert status == 400 and _error(answer) == (400, "company_id")
    # double opt-in list: pending; an explicit subscriptions object limits the channels
    profile_attrs = body["data"]["attributes"]["profile"]["data"]["attributes"]
    profile_attrs.update(
        email="bob@example.com",
        phone_number="+14155552672",
        subscriptions={"email": {"marketing": {"consent": "SUBSCRIBED"}}},
    )
    body["data"]["relationships"]["list"]["data"]["id"] = "DOUBLE"
    assert (await post(http, f"{url}?company_id=SBXPUB", body, CLIENT_HEADERS))[0] == 202
    bob = await profile_of(http, account.url, email="bob@example.com")
    assert bob["consent"]["email.marketing"]["state"] == "pending"
    assert bob["consent"]["sms.marketing"]["state"] == "never"


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"email": None}, "/data/attributes/profile/data/attributes"),
        ({"email": "nope"}, "/data/attributes/profile/data/attributes/email"),
        (
            {"subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}}},
            "/data/attributes/profile/data/attributes/phone_number",
        ),
        (
            {
                "subscriptions": {
                    "email": {"marketing": {"consent": "SUBSCRIBED", "consented_at": PAST}}
                }
            },
            "/data/attributes/profile/data/attributes/subscriptions/email/marketing/consented_at",
        ),
        ({"list": "NOPE00"}, "/data/relationships/list/data/id"),
    ],
)
async def test_client_subscription_errors_are_400s(
    account: SandboxServer, http: aiohttp.ClientSession, change: dict[str, Any], pointer: str
) -> None:
    attributes: dict[str, Any] = {"email": "ada@example.com"}
    list_id = change.pop("list", "NEWS01")
    attributes.update(change)
    body = {
        "data": {
            "type": "subscription",
            "attributes": {"profile": {"data": {"type": "profile", "attributes": attributes}}},
            "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
        }
    }
    url = f"{account.url}/client/subscriptions?company_id=SBXPUB"
    status, answer, _ = await post(http, url, body, CLIENT_HEADERS)
    assert status == 400 and _error(answer) == (400, pointer)
    assert (await inspect(http, account.url, "profiles"))["profiles"] == []


async def test_account_default_double_opt_in_applies_without_a_list(
    http: aiohttp.ClientSession,
) -> None:
    config = SandboxConfig(default_opt_in_process="double_opt_in")
    async with SandboxServer(config) as sb:
        body = consent_job("create", consenting("ada@example.com"))
        assert (await post(http, f"{sb.url}{SUBSCRIBE}", body))[0] == 202
        ada = await profile_of(http, sb.url, email="ada@example.com")
        assert ada["consent"]["email.marketing"]["state"] == "pending"
        historical = consent_job(
            "create", consenting("bob@example.com", consented_at=PAST), historical_import=True
        )
        assert (await post(http, f"{sb.url}{SUBSCRIBE}", historical))[0] == 202
        bob = await profile_of(http, sb.url, email="bob@example.com")
        assert bob["consent"]["email.marketing"]["state"] == "subscribed"


def test_consent_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="default_opt_in_process"):
        SandboxConfig(default_opt_in_process="triple")
    with pytest.raises(ValueError, match="lists"):
        SandboxConfig(lists=(SeedList("A", "x"), SeedList("A", "y")))


async def test_unsubscribe_naming_two_profiles_withdraws_each_channel_from_its_owner(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    both = consenting("ada@example.com", channels=("email",))
    await post(http, f"{base}{SUBSCRIBE}", consent_job("create", both))
    phone = consenting(phone_number="+14155552671", channels=("sms",))
    await post(http, f"{base}{SUBSCRIBE}", consent_job("create", phone))
    body = consent_job(
        "delete", withdrawing("ada@example.com", "+14155552671", channels=("email", "sms"))
    )
    assert (await post(http, f"{base}{UNSUBSCRIBE}", body))[0] == 202
    by_email = await profile_of(http, base, email="ada@example.com")
    by_phone = await profile_of(http, base, phone_number="+14155552671")
    assert by_email["id"] != by_phone["id"]  # not merged by an unsubscribe
    assert by_email["consent"]["email.marketing"]["state"] == "unsubscribed"
    assert by_phone["consent"]["sms.marketing"]["state"] == "unsubscribed"
    assert by_phone["attributes"]["email"] is None
