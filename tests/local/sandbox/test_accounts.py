"""Several Klaviyo accounts from one sandbox, told apart by key: each its own profiles, events,
lists, deletions, rate limits, fault injection, revocation and scopes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxAccount, SandboxConfig, SandboxServer, SeedList
from tests.support import wait_until
from tests.support.sandbox import (
    API_KEY,
    HEADERS,
    bulk_entry,
    bulk_event,
    bulk_events,
    event,
    post,
    profile,
    upsert,
)

KEY_B = "pk_brand_b_" + "1" * 24
KEY_C = "pk_brand_c_" + "2" * 24


def as_key(key: str) -> dict[str, str]:
    return {**HEADERS, "Authorization": f"Klaviyo-API-Key {key}"}


@pytest.fixture
async def brands() -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(
        deletion_delay_seconds=0.0,
        accounts=(
            SandboxAccount("brand-b", (KEY_B,), ("BRANDB",), lists=(SeedList("NEWSB1", "B"),)),
            SandboxAccount("brand-c", (KEY_C,), rate_limit_factor=0.1,
                           scopes=("events:write", "profiles:write")),
        ),
    )  # fmt: skip
    async with SandboxServer(config) as server:
        yield server


async def inspect_as(http: aiohttp.ClientSession, base: str, what: str, account: str) -> Any:
    async with http.get(f"{base}/sandbox/{what}", params={"account": account}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_the_same_email_in_two_accounts_is_a_profile_in_each(
    brands: SandboxServer, http: aiohttp.ClientSession
) -> None:
    who = profile(email="ada@example.com")
    for key, order in ((API_KEY, "A-1"), (KEY_B, "B-1"), (KEY_B, "B-2")):
        status, body, _ = await post(
            http, f"{brands.url}/api/events", event(who=who, unique_id=order), as_key(key)
        )
        assert status == 202, body
    default, brand_b = brands.sandbox.store, brands.account("brand-b").store
    assert [e.unique_id for e in default.events] == ["A-1"]
    assert [e.unique_id for e in brand_b.events] == ["B-1", "B-2"]
    assert len(default.profiles) == len(brand_b.profiles) == 1
    assert brands.account("brand-c").store.profiles == {}
    # a unique_id is unique per account: the default account takes "B-1" as its own
    status, _, _ = await post(
        http, f"{brands.url}/api/events", event(who=who, unique_id="B-1"), as_key(API_KEY)
    )
    assert status == 202 and len(default.events) == 2
    # the pages answer for the account asked, the default one without `?account=`
    shown = await inspect_as(http, brands.url, "events", "brand-b")
    assert [e["unique_id"] for e in shown["events"]] == ["B-1", "B-2"]
    async with http.get(f"{brands.url}/sandbox/events") as r:
        assert [e["unique_id"] for e in (await r.json())["events"]] == ["A-1", "B-1"]
    assert (await inspect_as(http, brands.url, "stats", "brand-b"))["events"] == 2
    lists = await inspect_as(http, brands.url, "lists", "brand-b")
    assert [m["id"] for m in lists["lists"]] == ["NEWSB1"]
    assert (await inspect_as(http, brands.url, "lists", "default"))["lists"] == []
    async with http.get(f"{brands.url}/sandbox/events", params={"account": "nobody"}) as r:
        assert r.status == 404


async def test_a_deletion_in_one_account_leaves_the_others_person(
    brands: SandboxServer, http: aiohttp.ClientSession
) -> None:
    for key in (API_KEY, KEY_B):
        status, _, _ = await post(
            http, f"{brands.url}/api/profile-import", upsert(email="bo@example.com"), as_key(key)
        )
        assert status == 201
    body = {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": "bo@example.com"}}}
            },
        }
    }
    status, _, _ = await post(
        http, f"{brands.url}/api/data-privacy-deletion-jobs", body, as_key(KEY_B)
    )  # fmt: skip
    assert status == 202
    brand_b = brands.account("brand-b")

    async def gone() -> bool:
        return not brand_b.store.profiles

    await wait_until(gone, timeout=10, what="b's deletion", poll=0.02)
    assert len(brands.sandbox.store.profiles) == 1
    assert brands.sandbox.store.deleted == []


async def test_each_account_has_its_own_rate_limits(
    brands: SandboxServer, http: aiohttp.ClientSession
) -> None:
    """brand-c's limits are a tenth of Klaviyo's: its bulk endpoint allows 1 request a second
    (10 × 0.1), and says so; the others keep their 10 in the same second."""
    url = f"{brands.url}/api/event-bulk-create-jobs"

    def body(i: int) -> dict[str, Any]:
        who = {"type": "profile", "attributes": {"email": f"p{i}@example.com"}}
        return bulk_events(bulk_entry(who, bulk_event(unique_id=f"u{i}")))

    first, _, headers = await post(http, url, body(0), as_key(KEY_C))
    second, refused, _ = await post(http, url, body(1), as_key(KEY_C))
    assert (first, second) == (202, 429), refused
    assert headers["RateLimit-Limit"] == "15"  # 150 a minute × 0.1
    answers = [(await post(http, url, body(i), as_key(KEY_B)))[0] for i in range(2, 7)]
    assert answers == [202] * 5
    default_limit = (await post(http, url, body(9), as_key(API_KEY)))[2]["RateLimit-Limit"]
    assert default_limit == "150"


async def test_fault_injection_and_revocation_are_per_account(
    brands: SandboxServer, http: aiohttp.ClientSession
) -> None:
    url = f"{brands.url}/api/events"
    async with http.post(
        f"{brands.url}/sandbox/faults", params={"account": "brand-b"},
        json={"fail": {"create_event": 503}},
    ) as r:  # fmt: skip
        assert r.status == 200
    assert (await post(http, url, event(unique_id="x1"), as_key(KEY_B)))[0] == 503
    assert (await post(http, url, event(unique_id="x2"), as_key(API_KEY)))[0] == 202

    async with http.post(f"{brands.url}/sandbox/accounts/default", json={"revoked": True}) as r:
        assert r.status == 200 and (await r.json())["revoked"] is True
    status, body, _ = await post(http, url, event(unique_id="x3"), as_key(API_KEY))
    assert status == 401 and body["errors"][0]["code"] == "not_authenticated"
    client = f"{brands.url}/client/events?company_id=BRANDB"
    client_event = event(who=profile(email="cy@example.com"), unique_id="x4")
    async with http.post(client, json=client_event, headers=HEADERS) as r:
        assert r.status == 202  # brand-b's public key: its own account, not revoked
    assert [e.unique_id for e in brands.account("brand-b").store.events] == ["x4"]
    async with http.get(f"{brands.url}/sandbox/accounts") as r:
        listed = {a["name"]: a for a in (await r.json())["accounts"]}
    assert listed["default"]["revoked"] and not listed["brand-b"]["revoked"]
    assert KEY_B not in str(listed) and API_KEY not in str(listed)

    async with http.post(f"{brands.url}/sandbox/reset") as r:  # every account, as at start
        assert r.status == 200
    assert (await post(http, url, event(unique_id="x5"), as_key(API_KEY)))[0] == 202
    assert (await post(http, url, event(unique_id="x6"), as_key(KEY_B)))[0] == 202
    assert brands.account("brand-b").store.lists.keys() == {"NEWSB1"}


async def test_a_key_without_a_scope_is_refused_with_403_naming_it(
    brands: SandboxServer, http: aiohttp.ClientSession
) -> None:
    """brand-c's key has events:write and profiles:write (which grants profiles:read)."""
    async with http.get(
        f"{brands.url}/api/profiles", headers=as_key(KEY_C), params={"page[size]": "1"}
    ) as r:
        assert r.status == 200
    async with http.get(f"{brands.url}/api/lists", headers=as_key(KEY_C)) as r:
        refused = await r.json()
        assert r.status == 403
    error = refused["errors"][0]
    assert error["code"] == "permission_denied"
    assert error["detail"] == "Your API key is missing required scopes: lists:read"
    assert (await post(http, f"{brands.url}/api/events", event(), as_key(KEY_C)))[0] == 202


async def test_requests_are_logged_in_their_own_accounts_log_without_a_key(
    brands: SandboxServer, http: aiohttp.ClientSession
) -> None:
    await post(http, f"{brands.url}/api/events", event(unique_id="b"), as_key(KEY_B))
    await post(http, f"{brands.url}/api/events", event(unique_id="a"), as_key(API_KEY))
    await post(http, f"{brands.url}/api/events", event(), as_key("pk_unknown_" + "9" * 20))
    logged = await inspect_as(http, brands.url, "requests", "brand-b")
    assert [r["body"]["data"]["attributes"]["unique_id"] for r in logged["requests"]] == ["b"]
    default = await inspect_as(http, brands.url, "requests", "default")
    assert [r["status"] for r in default["requests"]] == [202, 401]  # the unknown key's 401
    assert KEY_B not in str(logged) and API_KEY not in str(default)


def test_accounts_must_be_told_apart() -> None:
    with pytest.raises(ValueError, match="a key belongs to one account only"):
        SandboxConfig(accounts=(SandboxAccount("other", (API_KEY,)),))
    with pytest.raises(ValueError, match="names must be distinct"):
        SandboxConfig(accounts=(SandboxAccount("default", ("pk_x",)),))
    with pytest.raises(ValueError, match="give a private or a public key"):
        SandboxAccount("keyless")
    with pytest.raises(ValueError, match="a-z, 0-9"):
        SandboxAccount("Brand_B", ("pk_y",))
