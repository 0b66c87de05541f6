"""POST /api/data-privacy-deletion-jobs: one identifier, 202 at once, the profile gone later."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from tests.support import wait_until
from tests.support.sandbox import create, event, get, inspect, post, profile

URL = "/api/data-privacy-deletion-jobs"


def deletion(profile_id: str | None = None, **attributes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile_id is not None:
        data["id"] = profile_id
    return {
        "data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": data}}}
    }


@pytest.fixture
async def quick() -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(deletion_delay_seconds=0.05, lists=(SeedList("NEWS01", "News"),))
    async with SandboxServer(config) as server:
        yield server


async def _settled(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async def done() -> bool:
        return (await inspect(http, base, "deleted"))["pending"] == 0

    await wait_until(done, timeout=30, what="deletions applied", poll=0.02)
    return dict(await inspect(http, base, "deleted"))


async def _people(http: aiohttp.ClientSession, base: str) -> list[str]:
    return [p["id"] for p in (await inspect(http, base, "profiles"))["profiles"]]


@pytest.mark.parametrize(
    "kind", ["email", "phone_number", "id"], ids=["by-email", "by-phone", "by-id"]
)
async def test_each_identifier_kind_deletes_the_profile_and_its_events(
    quick: SandboxServer, http: aiohttp.ClientSession, kind: str
) -> None:
    base = quick.url
    doomed = await create(
        http, base, email="ada@example.com", phone_number="+14155552671", external_id="u-1"
    )
    kept = await create(http, base, email="bob@example.com")
    for who, uid in (
        (profile(email="ada@example.com"), "a"),
        (profile(email="bob@example.com"), "b"),
    ):
        await post(http, f"{base}/api/events", event(who=who, unique_id=uid))
    await post(
        http,
        f"{base}/api/lists/NEWS01/relationships/profiles",
        {"data": [{"type": "profile", "id": doomed}, {"type": "profile", "id": kept}]},
    )
    body = {
        "email": deletion(email="ada@example.com"),
        "phone_number": deletion(phone_number="+14155552671"),
        "id": deletion(doomed),
    }[kind]
    status, answer, headers = await post(http, f"{base}{URL}", body)
    assert (status, answer) == (202, None) and headers["RateLimit-Limit"] == "60"
    report = await _settled(http, base)
    assert await _people(http, base) == [kept]
    [gone] = report["deleted"]
    assert gone["id"] == doomed and gone["events_deleted"] == 1
    assert gone["identifiers"]["external_id"] == "u-1"
    [task] = report["deletions"]
    assert (task["kind"], task["status"], task["deleted_ids"]) == (kind, "applied", [doomed])
    events = (await inspect(http, base, "events"))["events"]
    assert [e["unique_id"] for e in events] == ["b"]
    lists = (await inspect(http, base, "lists"))["lists"]
    assert lists[0]["members"] == [kept]
    # the identifiers are free again: a new profile, and the old unique_id is not remembered
    status, found, _ = await get(
        http, f"{base}/api/profiles", {"filter": 'equals(external_id,"u-1")'}
    )
    assert found["data"] == []
    await post(
        http, f"{base}/api/events", event(who=profile(email="ada@example.com"), unique_id="a")
    )
    assert len((await inspect(http, base, "events"))["events"]) == 2
    assert (await inspect(http, base, "stats"))["deleted_profiles"] == 1


async def test_deletion_is_asynchronous(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(deletion_delay_seconds=3600)) as sb:
        ada = await create(http, sb.url, email="ada@example.com")
        assert (await post(http, f"{sb.url}{URL}", deletion(email="ada@example.com")))[0] == 202
        assert await _people(http, sb.url) == [ada]  # still there until the task runs
        report = await inspect(http, sb.url, "deleted")
        assert report["pending"] == 1 and report["deleted"] == []
        assert report["deletions"][0]["status"] == "pending"


async def test_a_merged_id_deletes_the_person_it_became(
    http: aiohttp.ClientSession,
) -> None:
    config = SandboxConfig(merge_delay_seconds=0, deletion_delay_seconds=0)
    async with SandboxServer(config) as sb:
        dest = await create(http, sb.url, email="ada@example.com")
        source = await create(http, sb.url, external_id="u-1")
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
        await post(http, f"{sb.url}{URL}", deletion(source))
        report = await _settled(http, sb.url)
        assert await _people(http, sb.url) == []
        assert report["deleted"][0]["id"] == dest
        assert report["deleted"][0]["merged_ids"] == [source]


async def test_nobody_matching_is_accepted_and_deletes_nothing(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    ada = await create(http, quick.url, email="ada@example.com")
    status, _, _ = await post(http, f"{quick.url}{URL}", deletion(email="nobody@example.com"))
    assert status == 202  # the answer never says whether someone exists
    report = await _settled(http, quick.url)
    assert report["deleted"] == [] and report["deletions"][0]["deleted_ids"] == []
    assert await _people(http, quick.url) == [ada]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (deletion(), "/data/attributes/profile/data"),
        (deletion(email=None, phone_number=None), "/data/attributes/profile/data"),
        (deletion("01X", email="a@example.com"), "/data/attributes/profile/data"),
        (
            deletion(email="a@example.com", phone_number="+14155552671"),
            "/data/attributes/profile/data",
        ),
        (deletion(email="not-an-email"), "/data/attributes/profile/data/attributes/email"),
        (
            deletion(phone_number="4155552671"),
            "/data/attributes/profile/data/attributes/phone_number",
        ),
        (deletion(external_id="u-1"), "/data/attributes/profile/data/attributes/external_id"),
    ],
)
async def test_exactly_one_valid_identifier_is_required(
    quick: SandboxServer, http: aiohttp.ClientSession, body: dict[str, Any], pointer: str
) -> None:
    status, answer, _ = await post(http, f"{quick.url}{URL}", body)
    assert status == 400
    [error] = answer["errors"]
    assert error["source"]["pointer"] == pointer
    assert (await inspect(http, quick.url, "deleted"))["deletions"] == []
