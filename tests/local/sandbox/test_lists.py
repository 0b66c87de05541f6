"""Lists (create, read, membership) and email suppression, as Klaviyo documents them."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from tests.support import wait_until
from tests.support.sandbox import (
    HEADERS,
    consent_job,
    consenting,
    create,
    get,
    inspect,
    post,
    profile_of,
    suppression_job,
)

LISTS = (SeedList("NEWS01", "Newsletter"), SeedList("DOUBLE", "VIP", double_opt_in=True))
SUPPRESS = "/api/profile-suppression-bulk-create-jobs"
UNSUPPRESS = "/api/profile-suppression-bulk-delete-jobs"


@pytest.fixture
async def account() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(SandboxConfig(lists=LISTS)) as server:
        yield server


def members(*ids: str) -> dict[str, Any]:
    return {"data": [{"type": "profile", "id": i} for i in ids]}


async def delete(
    http: aiohttp.ClientSession, url: str, body: Any
) -> tuple[int, Any, dict[str, str]]:
    raw = orjson.dumps(body)
    async with http.delete(url, data=io.BytesIO(raw), headers=HEADERS) as r:
        data = await r.read()
        return r.status, orjson.loads(data) if data else None, dict(r.headers)


async def _lists(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in (await inspect(http, base, "lists"))["lists"]}


async def test_seeded_and_created_lists_are_listed(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    url = f"{account.url}/api/lists"
    body = {"data": {"type": "list", "attributes": {"name": "Launch"}}}
    status, created, headers = await post(http, url, body)
    assert status == 201 and headers["RateLimit-Limit"] == "150"
    launch = created["data"]
    assert launch["type"] == "list" and len(launch["id"]) == 6
    assert launch["attributes"]["opt_in_process"] == "single_opt_in"  # the account default
    double = {
        "data": {"type": "list", "attributes": {"name": "D", "opt_in_process": "double_opt_in"}}
    }
    status, created, _ = await post(http, url, double)
    assert created["data"]["attributes"]["opt_in_process"] == "double_opt_in"
    status, page, headers = await get(http, url)
    assert status == 200 and headers["RateLimit-Limit"] == "750"
    assert [m["attributes"]["name"] for m in page["data"]] == ["Newsletter", "VIP", "Launch", "D"]
    status, page, _ = await get(http, url, {"filter": 'equals(name,"VIP")'})
    assert [m["id"] for m in page["data"]] == ["DOUBLE"]
    status, page, _ = await get(http, url, {"filter": 'any(id,["NEWS01","DOUBLE"])'})
    assert [m["id"] for m in page["data"]] == ["NEWS01", "DOUBLE"]
    status, page, _ = await get(http, url, {"page[size]": "11"})
    assert status == 400  # Klaviyo pages lists by at most 10
    blank = {"data": {"type": "list", "attributes": {"name": "  "}}}
    status, answer, _ = await post(http, url, blank)
    assert status == 400 and answer["errors"][0]["source"]["pointer"] == "/data/attributes/name"
    status, answer, _ = await post(http, url, {"data": {"type": "list", "attributes": {}}})
    assert status == 400 and answer["errors"][0]["source"]["pointer"] == "/data/attributes/name"


async def test_membership_is_not_consent(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    ada = await create(http, base, email="ada@example.com")
    bob = await create(http, base, external_id="bob")
    url = f"{base}/api/lists/DOUBLE/relationships/profiles"
    status, answer, headers = await post(http, url, members(ada, bob, ada))
    assert (status, answer) == (204, None) and headers["RateLimit-Limit"] == "150"
    assert (await _lists(http, base))["DOUBLE"]["members"] == [ada, bob]
    snapshot = await profile_of(http, base, id=ada)
    assert snapshot["lists"] == ["DOUBLE"]  # added at once, even to a double opt-in list
    assert snapshot["consent"]["email.marketing"]["state"] == "never"
    assert snapshot["can_receive"]["email.marketing"] is False
    status, _, _ = await delete(http, url, members(ada))
    assert status == 204
    assert (await _lists(http, base))["DOUBLE"]["members"] == [bob]
    status, _, _ = await delete(http, url, members(ada))  # not a member: nothing to do
    assert status == 204


async def test_removing_from_a_list_keeps_consent(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    body = consent_job("create", consenting("ada@example.com"), list_id="NEWS01")
    await post(http, f"{base}/api/profile-subscription-bulk-create-jobs", body)
    ada = (await profile_of(http, base, email="ada@example.com"))["id"]
    await delete(http, f"{base}/api/lists/NEWS01/relationships/profiles", members(ada))
    snapshot = await profile_of(http, base, id=ada)
    assert snapshot["lists"] == []
    assert snapshot["consent"]["email.marketing"]["state"] == "subscribed"


async def test_unknown_list_or_profile_ids_are_404_and_change_nothing(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    ada = await create(http, base, email="ada@example.com")
    status, answer, _ = await post(
        http, f"{base}/api/lists/NOPE00/relationships/profiles", members(ada)
    )
    assert status == 404 and answer["errors"][0]["source"] == {"parameter": "id"}
    url = f"{base}/api/lists/NEWS01/relationships/profiles"
    status, answer, _ = await post(http, url, members(ada, "01GHOST", "01OTHER"))
    assert status == 404
    assert [e["source"]["pointer"] for e in answer["errors"]] == ["/data/1/id", "/data/2/id"]
    assert (await _lists(http, base))["NEWS01"]["members"] == []
    status, answer, _ = await delete(http, url, members("01GHOST"))
    assert status == 404
    status, answer, _ = await post(http, url, {"data": [{"type": "list", "id": ada}]})
    assert status == 400  # the schema wants profile resources
    status, answer, _ = await post(http, url, members(*[ada] * 1001))
    assert status == 400 and answer["errors"][0]["source"]["pointer"] == "/data"
    assert (await post(http, url, members(*[ada] * 1000)))[0] == 204


async def test_a_merged_id_joins_as_its_destination(http: aiohttp.ClientSession) -> None:
    config = SandboxConfig(lists=LISTS, merge_delay_seconds=0)
    async with SandboxServer(config) as sb:
        dest = await create(http, sb.url, email="ada@example.com")
        source = await create(http, sb.url, external_id="u-1")
        await post(http, f"{sb.url}/api/lists/NEWS01/relationships/profiles", members(source))
        merge = {
            "data": {
                "type": "profile-merge",
                "id": dest,
                "relationships": {"profiles": {"data": [{"type": "profile", "id": source}]}},
            }
        }
        await post(http, f"{sb.url}/api/profile-merge", merge)

        async def merged() -> bool:
            return (await inspect(http, sb.url, "stats"))["merges"] == 1

        await wait_until(merged, timeout=30, what="the merge", poll=0.01)
        assert (await _lists(http, sb.url))["NEWS01"]["members"] == [dest]
        await post(http, f"{sb.url}/api/lists/DOUBLE/relationships/profiles", members(source))
        assert (await _lists(http, sb.url))["DOUBLE"]["members"] == [dest]


async def test_suppression_blocks_email_and_an_unknown_email_is_created_suppressed(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    await post(
        http,
        f"{base}/api/profile-subscription-bulk-create-jobs",
        consent_job(
            "create", consenting("ada@example.com", "+14155552671", channels=("email", "sms"))
        ),
    )
    status, job, headers = await post(
        http, f"{base}{SUPPRESS}", suppression_job("create", "ada@example.com", "new@example.com")
    )
    assert status == 202 and headers["RateLimit-Limit"] == "750"
    assert job["data"]["type"] == "profile-suppression-bulk-create-job"
    assert job["data"]["attributes"]["total_count"] == 2
    ada = await profile_of(http, base, email="ada@example.com")
    assert ada["consent"]["email.marketing"]["state"] == "subscribed"  # consent untouched
    assert ada["can_receive"]["email.marketing"] is False  # but email is blocked
    assert ada["can_receive"]["sms.marketing"] is True  # suppression is email only
    new = await profile_of(http, base, email="new@example.com")
    assert [s["reason"] for s in new["suppressions"]] == ["USER_SUPPRESSED"]
    status, found, _ = await get(
        http,
        f"{base}/api/profiles",
        {
            "filter": 'equals(email,"ada@example.com")',
            "additional-fields[profile]": "subscriptions",
        },
    )
    marketing = found["data"][0]["attributes"]["subscriptions"]["email"]["marketing"]
    assert marketing["can_receive_email_marketing"] is False
    assert [s["reason"] for s in marketing["suppression"]] == ["USER_SUPPRESSED"]
    status, _, _ = await post(
        http, f"{base}{UNSUPPRESS}", suppression_job("delete", "ada@example.com")
    )
    assert status == 202
    ada = await profile_of(http, base, email="ada@example.com")
    assert ada["suppressions"] == [] and ada["can_receive"]["email.marketing"] is True


async def test_unsuppress_lifts_only_user_suppressed(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    await post(
        http,
        f"{base}/api/profile-subscription-bulk-delete-jobs",
        {
            "data": {
                "type": "profile-subscription-bulk-delete-job",
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                "type": "profile",
                                "attributes": {
                                    "email": "ada@example.com",
                                    "subscriptions": {
                                        "email": {"marketing": {"consent": "UNSUBSCRIBED"}}
                                    },
                                },
                            }
                        ]
                    }
                },
            }
        },
    )
    await post(http, f"{base}{SUPPRESS}", suppression_job("create", "ada@example.com"))
    await post(
        http,
        f"{base}{UNSUPPRESS}",
        suppression_job("delete", "ada@example.com", "nobody@example.com"),
    )
    ada = await profile_of(http, base, email="ada@example.com")
    assert [s["reason"] for s in ada["suppressions"]] == ["UNSUBSCRIBE"]
    assert [
        p["attributes"]["email"] for p in (await inspect(http, base, "profiles"))["profiles"]
    ] == ["ada@example.com"]  # unsuppressing an unknown email creates nobody
    jobs = (await inspect(http, base, "consent-jobs"))["jobs"]
    assert [r["result"] for r in jobs[-1]["results"]] == [
        "unsuppressed",
        "skipped: no profile has this email",
    ]


async def test_suppressing_a_list_suppresses_its_members(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = account.url
    ada = await create(http, base, email="ada@example.com")
    bob = await create(http, base, email="bob@example.com")
    await post(http, f"{base}/api/lists/NEWS01/relationships/profiles", members(ada))
    status, job, _ = await post(
        http, f"{base}{SUPPRESS}", suppression_job("create", list_id="NEWS01")
    )
    assert status == 202
    assert job["data"]["relationships"]["lists"]["data"] == [{"type": "list", "id": "NEWS01"}]
    assert (await profile_of(http, base, id=ada))["suppressions"][0]["reason"] == "USER_SUPPRESSED"
    assert (await profile_of(http, base, id=bob))["suppressions"] == []


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        (suppression_job("create"), 400, "/data"),
        (suppression_job("create", "a@example.com", list_id="NEWS01"), 400, "/data"),
        (
            suppression_job("create", segment_id="SEG001"),
            404,
            "/data/relationships/segment/data/id",
        ),
        (suppression_job("create", list_id="NOPE00"), 404, "/data/relationships/list/data/id"),
        (
            suppression_job("create", "bad-email"),
            400,
            "/data/attributes/profiles/data/0/attributes/email",
        ),
        (
            suppression_job("create", *[f"u{i}@example.com" for i in range(101)]),
            400,
            "/data/attributes/profiles/data",
        ),
    ],
)
async def test_suppression_requests_are_checked(
    account: SandboxServer,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    status: int,
    pointer: str,
) -> None:
    got, answer, _ = await post(http, f"{account.url}{SUPPRESS}", body)
    assert got == status and answer["errors"][0]["source"]["pointer"] == pointer
    assert (await inspect(http, account.url, "profiles"))["profiles"] == []


async def test_suppression_is_email_only(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    body = suppression_job("create", "a@example.com")
    body["data"]["attributes"]["profiles"]["data"][0]["attributes"]["phone_number"] = "+14155552671"
    status, answer, _ = await post(http, f"{account.url}{SUPPRESS}", body)
    assert status == 400
    assert "phone_number" in answer["errors"][0]["detail"]
    assert (
        await post(
            http,
            f"{account.url}{SUPPRESS}",
            suppression_job("create", *[f"u{i}@example.com" for i in range(100)]),
        )
    )[0] == 202


async def test_bulk_import_adds_to_existing_lists_only(
    account: SandboxServer, http: aiohttp.ClientSession
) -> None:
    def job(list_id: str) -> dict[str, Any]:
        profiles = [{"type": "profile", "attributes": {"email": "ada@example.com"}}]
        return {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": profiles}},
                "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
            }
        }

    url = f"{account.url}/api/profile-bulk-import-jobs"
    status, answer, _ = await post(http, url, job("NOPE00"))
    assert status == 404
    assert answer["errors"][0]["source"]["pointer"] == "/data/relationships/lists/data/0/id"
    assert (await inspect(http, account.url, "profiles"))["profiles"] == []
    assert (await post(http, url, job("DOUBLE")))[0] == 202
    ada = await profile_of(http, account.url, email="ada@example.com")
    assert ada["lists"] == ["DOUBLE"] and ada["consent"]["email.marketing"]["state"] == "never"
