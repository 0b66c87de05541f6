"""POST /api/profile-merge as Klaviyo documents it: one source, a queued task, applied later."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support import wait_until
from tests.support.sandbox import create, event, get, inspect, merge_body, post, profile, upsert

NEVER = 3600.0  # a merge delay no test outlives: the merge stays pending
SOON = 0.05


@pytest.fixture
async def slow() -> AsyncIterator[SandboxServer]:
    """A sandbox whose merges stay queued for the whole test."""
    async with SandboxServer(SandboxConfig(merge_delay_seconds=NEVER)) as server:
        yield server


@pytest.fixture
async def quick() -> AsyncIterator[SandboxServer]:
    """A sandbox that applies merges 50 ms after answering."""
    async with SandboxServer(SandboxConfig(merge_delay_seconds=SOON)) as server:
        yield server


async def _merges(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    return dict(await inspect(http, base, "merges"))


async def _settled(http: aiohttp.ClientSession, base: str) -> None:
    async def done() -> bool:
        return (await _merges(http, base))["pending"] == 0

    await wait_until(done, timeout=30, what="queued merges applied", poll=0.02)


async def _ids(http: aiohttp.ClientSession, base: str, expression: str) -> list[str]:
    status, body, _ = await get(http, f"{base}/api/profiles", {"filter": expression})
    assert status == 200, body
    return [p["id"] for p in body["data"]]


async def test_merge_answers_201_at_once_and_leaves_the_source_in_place_until_applied(
    slow: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = slow.url
    dest = await create(http, base, email="ada@example.com")
    source = await create(http, base, external_id="u-1", first_name="Augusta")
    status, answer, _ = await post(http, f"{base}/api/profile-merge", merge_body(dest, source))
    assert status == 201
    assert answer["data"] == {
        "type": "profile",
        "id": dest,
        "links": {"self": f"{base}/api/profiles/{dest}/"},
    }
    # pending: the source is still a profile of its own, found by id and by identifier
    assert await _ids(http, base, f'equals(id,"{source}")') == [source]
    assert await _ids(http, base, 'equals(external_id,"u-1")') == [source]
    # an upsert naming both profiles' identifiers still conflicts
    both = upsert(email="ada@example.com", external_id="u-1")
    status, body, _ = await post(http, f"{base}/api/profile-import", both)
    assert status == 409
    assert body["errors"][0]["meta"]["duplicate_profile_id"] == source
    # the source's own identifier still updates the source alone
    status, body, _ = await post(
        http, f"{base}/api/profile-import", upsert(external_id="u-1", last_name="King")
    )
    assert status == 200 and body["data"]["id"] == source
    merges = await _merges(http, base)
    assert merges["pending"] == 1 and merges["applied"] == 0
    [task] = merges["merges"]
    assert (task["destination_id"], task["source_id"], task["status"]) == (dest, source, "pending")
    assert task["applied_at"] is None and task["due_at"] > task["requested_at"]
    stats = await inspect(http, base, "stats")
    assert stats["merges"] == 0 and stats["pending_merges"] == 1 and stats["profiles"] == 2


async def test_applied_merge_folds_the_source_and_its_id_resolves_to_the_destination(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    dest = await create(
        http, base, email="ada@example.com", first_name="Ada", properties={"k": "dest"}
    )
    source = await create(
        http,
        base,
        external_id="u-1",
        first_name="Augusta",
        last_name="King",
        properties={"k": "src", "s": 1},
    )
    await post(http, f"{base}/api/events", event(who=profile(external_id="u-1"), unique_id="e1"))
    status, _, _ = await post(http, f"{base}/api/profile-merge", merge_body(dest, source))
    assert status == 201
    await _settled(http, base)
    assert await _ids(http, base, f'equals(id,"{source}")') == []  # how a client sees it landed
    assert await _ids(http, base, 'equals(external_id,"u-1")') == [dest]
    snapshot = await inspect(http, base, "profiles")
    [merged] = snapshot["profiles"]
    assert merged["id"] == dest and merged["merged_ids"] == [source]
    attributes = merged["attributes"]
    assert (attributes["external_id"], attributes["last_name"]) == ("u-1", "King")
    assert attributes["first_name"] == "Ada"  # the destination's own value wins
    assert merged["properties"] == {"k": "dest", "s": 1}
    assert snapshot["merged_into"] == {source: dest}
    # the old id resolves, events follow, the same unique_id is still refused
    by_old_id = {"type": "profile", "id": source, "attributes": {}}
    await post(http, f"{base}/api/events", event(who=by_old_id, unique_id="e2"))
    await post(
        http, f"{base}/api/events", event(who=profile(email="ada@example.com"), unique_id="e1")
    )
    events = (await inspect(http, base, "events"))["events"]
    assert [(e["unique_id"], e["profile_id"]) for e in events] == [("e1", dest), ("e2", dest)]
    # the identifiers that conflicted now belong to one profile
    both = upsert(email="ada@example.com", external_id="u-1")
    status, body, _ = await post(http, f"{base}/api/profile-import", both)
    assert status == 200 and body["data"]["id"] == dest
    [task] = (await _merges(http, base))["merges"]
    assert task["status"] == "applied" and task["applied_at"] is not None
    stats = await inspect(http, base, "stats")
    assert stats["merges"] == 1 and stats["refused_duplicates"] == 1


@pytest.mark.parametrize("count", [0, 2, 3])
async def test_only_one_source_profile_is_accepted(
    slow: SandboxServer, http: aiohttp.ClientSession, count: int
) -> None:
    base = slow.url
    dest = await create(http, base, email="ada@example.com")
    sources = [await create(http, base, external_id=f"u-{i}") for i in range(count)]
    status, body, _ = await post(http, f"{base}/api/profile-merge", merge_body(dest, *sources))
    assert status == 400
    [error] = body["errors"]
    assert error["code"] == "invalid"
    assert error["source"] == {"pointer": "/data/relationships/profiles/data"}
    assert "only one source profile" in error["detail"]
    assert (await _merges(http, base))["merges"] == []  # nothing queued


async def test_unknown_or_same_profiles_are_refused_at_request_time(
    slow: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = slow.url
    dest = await create(http, base, email="ada@example.com")
    url = f"{base}/api/profile-merge"
    status, body, _ = await post(http, url, merge_body(dest, "01GHOST"))
    assert status == 404
    assert body["errors"][0]["source"]["pointer"] == "/data/relationships/profiles/data/0/id"
    status, body, _ = await post(http, url, merge_body("01GHOST", dest))
    assert status == 404 and body["errors"][0]["source"]["pointer"] == "/data/id"
    status, body, _ = await post(http, url, merge_body(dest, dest))
    assert status == 400 and body["errors"][0]["code"] == "invalid"
    assert (await _merges(http, base))["merges"] == []


async def test_a_source_merged_twice_is_applied_once_and_then_is_gone(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    """A retried merge request while the first is pending: both are accepted (each queues a
    task), the second finds nothing to do. After it landed the source no longer exists."""
    base = quick.url
    dest = await create(http, base, email="ada@example.com")
    other = await create(http, base, email="bob@example.com")
    source = await create(http, base, external_id="u-1")
    url = f"{base}/api/profile-merge"
    assert (await post(http, url, merge_body(dest, source)))[0] == 201
    assert (await post(http, url, merge_body(dest, source)))[0] == 201
    assert (await post(http, url, merge_body(other, source)))[0] == 201  # elsewhere, too late
    await _settled(http, base)
    merges = await _merges(http, base)
    assert [m["status"] for m in merges["merges"]] == ["applied", "skipped", "skipped"]
    assert merges["merges"][1]["note"] == "the source profile no longer exists"
    snapshot = await inspect(http, base, "profiles")
    owners = {p["id"]: p["attributes"]["external_id"] for p in snapshot["profiles"]}
    assert owners == {dest: "u-1", other: None}
    assert (await inspect(http, base, "stats"))["merges"] == 1
    status, body, _ = await post(http, url, merge_body(dest, source))
    assert status == 404
    assert body["errors"][0]["source"]["pointer"] == "/data/relationships/profiles/data/0/id"


async def test_a_chain_of_pending_merges_ends_in_the_last_live_profile(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    """B into A, then C into B, both queued before either landed: C follows B into A."""
    base = quick.url
    a = await create(http, base, email="a@example.com")
    b = await create(http, base, external_id="b")
    c = await create(http, base, phone_number="+14155552671")
    url = f"{base}/api/profile-merge"
    assert (await post(http, url, merge_body(a, b)))[0] == 201
    assert (await post(http, url, merge_body(b, c)))[0] == 201  # b still exists: accepted
    await _settled(http, base)
    [first, second] = (await _merges(http, base))["merges"]
    assert (first["status"], second["status"]) == ("applied", "applied")
    assert second["note"] == f"destination {b} had been merged into {a}"
    [only] = (await inspect(http, base, "profiles"))["profiles"]
    assert only["id"] == a and only["merged_ids"] == [b, c]
    held = (only["attributes"][k] for k in ("email", "external_id", "phone_number"))
    assert tuple(held) == ("a@example.com", "b", "+14155552671")


async def test_opposite_merges_queued_together_apply_only_the_first(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    a = await create(http, base, email="a@example.com")
    b = await create(http, base, external_id="b")
    url = f"{base}/api/profile-merge"
    assert (await post(http, url, merge_body(a, b)))[0] == 201
    assert (await post(http, url, merge_body(b, a)))[0] == 201
    await _settled(http, base)
    [first, second] = (await _merges(http, base))["merges"]
    assert first["status"] == "applied"
    assert (second["status"], second["note"]) == (
        "skipped",
        "the source has become the destination",
    )
    assert [p["id"] for p in (await inspect(http, base, "profiles"))["profiles"]] == [a]


async def test_events_sent_to_a_pending_source_move_with_it(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    dest = await create(http, base, email="ada@example.com")
    source = await create(http, base, external_id="u-1")
    assert (await post(http, f"{base}/api/profile-merge", merge_body(dest, source)))[0] == 201
    # sent right after the 201: whether it lands before or after the merge, it ends on dest
    await post(http, f"{base}/api/events", event(who=profile(external_id="u-1"), unique_id="x"))
    await _settled(http, base)
    [stored] = (await inspect(http, base, "events"))["events"]
    assert stored["profile_id"] == dest


async def test_reset_and_shutdown_drop_queued_merges(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(merge_delay_seconds=NEVER)) as server:
        dest = await create(http, server.url, email="ada@example.com")
        source = await create(http, server.url, external_id="u-1")
        await post(http, f"{server.url}/api/profile-merge", merge_body(dest, source))
        assert server.sandbox.scheduler.pending == 1
        async with http.post(f"{server.url}/sandbox/reset") as r:
            assert r.status == 200
        assert server.sandbox.scheduler.pending == 0
        assert (await _merges(http, server.url))["merges"] == []
        dest = await create(http, server.url, email="ada@example.com")
        source = await create(http, server.url, external_id="u-1")
        await post(http, f"{server.url}/api/profile-merge", merge_body(dest, source))
    assert server.sandbox.scheduler.pending == 0  # stopped: nothing left to fire on a dead loop


def test_merge_delay_must_be_sane() -> None:
    with pytest.raises(ValueError, match="merge_delay_seconds"):
        SandboxConfig(merge_delay_seconds=-1)
    with pytest.raises(ValueError, match="merge_delay_seconds"):
        SandboxConfig(merge_delay_seconds=7200)
