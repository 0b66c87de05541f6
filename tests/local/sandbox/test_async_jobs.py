"""Event and profile jobs applied after the answer (`job_delay_seconds`), as Klaviyo does.

Klaviyo answers an event or a profile bulk job with a 202 and applies it later, so a job
accepted just before a data-privacy deletion can create the profile again after it (issue 19,
case 4). With a delay the sandbox validates a job at once (the same 400s), answers 202, and
applies it after the delay in the order accepted; with none (the default) it applies it before
the answer, as every other test assumes. Most tests here hold jobs with a delay of an hour
and release them with `POST /sandbox/jobs {"flush": true}`, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from tests.support import free_port, wait_until
from tests.support.cli import ROOT, clean_env, cli
from tests.support.sandbox import (
    bulk_entry,
    bulk_event,
    bulk_events,
    consent_job,
    consenting,
    create,
    event,
    get,
    inspect,
    post,
    profile,
    profile_of,
    suppression_job,
    upsert,
    withdrawing,
)

HOUR = 3600.0
# a real delay, for the tests of the timer itself: long enough for the checks made before it
# passes on a loaded machine (1 s was not, with ten processes on two cores)
DELAY = 5.0
BULK = "/api/event-bulk-create-jobs"
IMPORT = "/api/profile-bulk-import-jobs"
SUBSCRIBE = "/api/profile-subscription-bulk-create-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
SUPPRESS = "/api/profile-suppression-bulk-create-jobs"
DELETE = "/api/data-privacy-deletion-jobs"
CLIENT = "?company_id=SBXPUB"


def import_body(*profiles: dict[str, Any], list_id: str | None = None) -> dict[str, Any]:
    """A POST /api/profile-bulk-import-jobs body."""
    data: dict[str, Any] = {
        "type": "profile-bulk-import-job",
        "attributes": {
            "profiles": {"data": [{"type": "profile", "attributes": p} for p in profiles]}
        },
    }
    if list_id is not None:
        data["relationships"] = {"lists": {"data": [{"type": "list", "id": list_id}]}}
    return {"data": data}


def deletion(profile_id: str | None = None, **attributes: Any) -> dict[str, Any]:
    """A POST /api/data-privacy-deletion-jobs body."""
    who: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile_id is not None:
        who["id"] = profile_id
    return {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": who}}}}


async def send(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    """POST `body`, which must be accepted (202); returns the answer's body."""
    status, answer, _ = await post(http, url, body)
    assert status == 202, answer
    return answer


def client_subscription(email: str, list_id: str) -> dict[str, Any]:
    """A POST /client/subscriptions body."""
    who = {"type": "profile", "attributes": {"email": email}}
    return {
        "data": {
            "type": "subscription",
            "attributes": {"profile": {"data": who}},
            "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
        }
    }


async def jobs(http: aiohttp.ClientSession, base: str, **change: Any) -> dict[str, Any]:
    """GET /sandbox/jobs, or POST `change` to it."""
    if not change:
        return dict(await inspect(http, base, "jobs"))
    async with http.post(f"{base}/sandbox/jobs", json=change) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def settled(http: aiohttp.ClientSession, base: str, what: str = "pending_jobs") -> None:
    """Wait until /sandbox/stats shows nothing of `what` pending."""

    async def done() -> bool:
        return int((await inspect(http, base, "stats"))[what]) == 0

    await wait_until(done, timeout=30, what=f"{what} == 0", poll=0.02)


async def emails(http: aiohttp.ClientSession, base: str) -> list[str]:
    """The email of every live profile, in creation order."""
    return [p["attributes"]["email"] for p in (await inspect(http, base, "profiles"))["profiles"]]


@pytest.fixture
async def held() -> AsyncIterator[SandboxServer]:
    """Jobs wait an hour (released by a flush); deletions land 50 ms after their 202."""
    config = SandboxConfig(
        job_delay_seconds=HOUR, deletion_delay_seconds=0.05, lists=(SeedList("NEWS01", "News"),)
    )
    async with SandboxServer(config) as server:
        yield server


async def test_a_bulk_event_job_is_invisible_until_its_delay_has_passed(
    http: aiohttp.ClientSession,
) -> None:
    async with SandboxServer(SandboxConfig(job_delay_seconds=DELAY)) as sb:
        body = bulk_events(bulk_entry(profile(email="ada@example.com"), bulk_event(unique_id="e1")))
        status, answer, _ = await post(http, f"{sb.url}{BULK}", body)
        assert (status, answer) == (202, None)
        found = await get(
            http, f"{sb.url}/api/profiles", {"filter": 'equals(email,"ada@example.com")'}
        )
        assert found[1]["data"] == []
        stats = await inspect(http, sb.url, "stats")
        assert (stats["events"], stats["pending_jobs"]) == (0, 1)
        assert stats["pending_job_kinds"] == {"events": 1}
        [queued] = (await jobs(http, sb.url))["queued"]
        assert (queued["kind"], queued["size"]) == ("events", 1)

        await settled(http, sb.url)
        [stored] = (await inspect(http, sb.url, "events"))["events"]
        assert stored["unique_id"] == "e1"
        found = await get(
            http, f"{sb.url}/api/profiles", {"filter": 'equals(email,"ada@example.com")'}
        )
        assert [p["id"] for p in found[1]["data"]] == [stored["profile_id"]]
        assert (await jobs(http, sb.url))["applied"] == {"events": 1}


async def test_an_event_job_accepted_before_a_deletion_recreates_the_profile_after_it(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = held.url
    original = await create(http, base, email="ada@example.com", external_id="u-ada")
    body = bulk_events(bulk_entry(profile(email="ada@example.com"), bulk_event(unique_id="late")))
    await send(http, f"{base}{BULK}", body)
    await send(http, f"{base}{DELETE}", deletion(email="ada@example.com"))
    await settled(http, base, "pending_deletions")
    assert await emails(http, base) == []  # the deletion landed first ...
    assert (await inspect(http, base, "stats"))["pending_jobs"] == 1

    assert (await jobs(http, base, flush=True))["pending"] == 0  # ... then the older job
    comeback = await profile_of(http, base, email="ada@example.com")
    assert comeback["id"] != original
    assert comeback["attributes"]["external_id"] is None  # a new profile, not the old one
    [stored] = (await inspect(http, base, "events"))["events"]
    assert (stored["unique_id"], stored["profile_id"]) == ("late", comeback["id"])
    [gone] = (await inspect(http, base, "deleted"))["deleted"]
    assert (gone["id"], gone["events_deleted"]) == (original, 0)


async def test_a_profile_import_job_reads_queued_until_it_runs_then_complete(
    http: aiohttp.ClientSession,
) -> None:
    async with SandboxServer(SandboxConfig(job_delay_seconds=DELAY)) as sb:
        await create(http, sb.url, email="taken@example.com")
        await create(http, sb.url, phone_number="+14155552671")
        body = import_body(
            {"email": "new@example.com"},
            {"email": "taken@example.com", "phone_number": "+14155552671"},  # two profiles
        )
        status, answer, _ = await post(http, f"{sb.url}{IMPORT}", body)
        assert status == 202 and answer["data"]["attributes"]["status"] == "queued"
        job_url = f"{sb.url}{IMPORT}/{answer['data']['id']}"
        status, job, _ = await get(http, job_url)
        attributes = job["data"]["attributes"]
        assert (status, attributes["status"], attributes["completed_count"]) == (200, "queued", 0)
        assert attributes["started_at"] is None and attributes["completed_at"] is None
        assert (await get(http, f"{job_url}/import-errors"))[1]["data"] == []
        assert "new@example.com" not in await emails(http, sb.url)
        assert (await inspect(http, sb.url, "stats"))["pending_job_kinds"] == {"profile_import": 1}

        await settled(http, sb.url)  # (the job endpoint's own rate limit is 10/s)
        attributes = (await get(http, job_url))[1]["data"]["attributes"]
        assert (attributes["completed_count"], attributes["failed_count"]) == (1, 1)
        [error] = (await get(http, f"{job_url}/import-errors"))[1]["data"]
        assert error["attributes"]["code"] == "duplicate_profile"
        assert "new@example.com" in await emails(http, sb.url)


async def test_jobs_apply_in_acceptance_order_across_kinds_even_when_the_delay_shrinks(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = held.url
    first = event(who=profile(email="ada@example.com", first_name="One"), unique_id="1")
    await send(http, f"{base}/api/events", first)
    await send(http, f"{base}{SUBSCRIBE}", consent_job("create", consenting("ada@example.com")))
    assert (await jobs(http, base, job_delay_seconds=0))["job_delay_seconds"] == 0
    second = event(who=profile(email="ada@example.com", first_name="Two"), unique_id="2")
    await send(http, f"{base}/api/events", second)
    await send(http, f"{base}{UNSUBSCRIBE}", consent_job("delete", withdrawing("ada@example.com")))
    # no delay now, but the later jobs wait behind the held ones: never ahead of them
    state = await jobs(http, base)
    assert [j["kind"] for j in state["queued"]] == ["events", "subscribe", "events", "unsubscribe"]
    assert await emails(http, base) == []

    await jobs(http, base, flush=True)
    ada = await profile_of(http, base, email="ada@example.com")
    assert ada["attributes"]["first_name"] == "Two"
    assert ada["consent"]["email.marketing"]["state"] == "unsubscribed"
    stored = (await inspect(http, base, "events"))["events"]
    assert [e["unique_id"] for e in stored] == ["1", "2"]
    results = [job["kind"] for job in (await inspect(http, base, "consent-jobs"))["jobs"]]
    assert results == ["subscribe", "unsubscribe"]
    # with the queue empty, a zero delay applies before the answer again
    await send(http, f"{base}/api/events", event(who=profile(email="bob@example.com")))
    assert (await inspect(http, base, "stats"))["pending_jobs"] == 0
    assert "bob@example.com" in await emails(http, base)


def _bad_requests() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, body) of requests the sandbox refuses whatever the delay."""
    twice = bulk_events(
        bulk_entry(profile(email="ada@example.com"), bulk_event(unique_id="x")),
        bulk_entry(profile(email="ADA@example.com"), bulk_event(unique_id="x")),
    )
    return [
        ("bulk bad email", BULK, bulk_events(bulk_entry(profile(email="nope"), bulk_event()))),
        ("bulk repeated unique_id", BULK, twice),
        (
            "event for an unknown id",
            "/api/events",
            event(who={"type": "profile", "id": "01NOPE", "attributes": {}}),
        ),
        ("event without a metric", "/api/events", {"data": {"type": "event", "attributes": {}}}),
        (
            "import into an unknown list",
            IMPORT,
            import_body({"email": "a@example.com"}, list_id="NOPE"),
        ),
        ("import of a bad email", IMPORT, import_body({"email": "not-an-email"})),
        (
            "subscribe a bad phone",
            SUBSCRIBE,
            consent_job("create", consenting(phone_number="555", channels=("sms",))),
        ),
        (
            "client subscription to an unknown list",
            f"/client/subscriptions{CLIENT}",
            client_subscription("ada@example.com", "NOPE"),
        ),
        (
            "suppress a bad email",
            SUPPRESS,
            suppression_job("create", "nope"),
        ),
        (
            "client profile with an unknown id",
            f"/client/profiles{CLIENT}",
            {"data": {"type": "profile", "id": "01NOPE", "attributes": {}}},
        ),
    ]


def _without_ids(document: Any) -> Any:
    """An error document without its random error ids."""
    for error in (document or {}).get("errors", []):
        error.pop("id", None)
    return document


@pytest.mark.parametrize(
    ("path", "body"),
    [(p, b) for _, p, b in _bad_requests()],
    ids=[n for n, _, _ in _bad_requests()],
)
async def test_a_delay_changes_no_refusal(
    held: SandboxServer, sandbox: SandboxServer, http: aiohttp.ClientSession, path: str, body: Any
) -> None:
    now_status, now_answer, _ = await post(http, f"{sandbox.url}{path}", body)
    later_status, later_answer, _ = await post(http, f"{held.url}{path}", body)
    assert now_status >= 400
    assert (later_status, _without_ids(later_answer)) == (now_status, _without_ids(now_answer))
    assert (await inspect(http, held.url, "stats"))["pending_jobs"] == 0


async def test_unique_id_refusal_is_decided_when_the_job_is_applied(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = held.url
    for properties in ({"n": 1}, {"n": 2}):
        body = event(unique_id="msg-1", time="2024-05-01T10:00:00Z", properties=properties)
        await send(http, f"{base}/api/events", body)
    assert (await inspect(http, base, "stats"))["refused_duplicates"] == 0
    await jobs(http, base, flush=True)
    assert [e["properties"] for e in (await inspect(http, base, "events"))["events"]] == [{"n": 1}]
    assert (await inspect(http, base, "stats"))["refused_duplicates"] == 1


async def test_a_job_for_a_profile_id_deleted_before_it_runs_is_dropped_and_shown(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = held.url
    ada = await create(http, base, email="ada@example.com")
    by_id = event(who={"type": "profile", "id": ada, "attributes": {}}, unique_id="orphan")
    await send(http, f"{base}/api/events", by_id)
    subscribe = consent_job("create", consenting(profile_id=ada, email="ada@example.com"))
    await send(http, f"{base}{SUBSCRIBE}", subscribe)
    await send(http, f"{base}{DELETE}", deletion(ada))
    await settled(http, base, "pending_deletions")

    state = await jobs(http, base, flush=True)
    [failed] = state["failed"]
    assert failed["kind"] == "events" and failed["reason"] == f"profile {ada} does not exist"
    assert state["applied"] == {"subscribe": 1}
    assert (await inspect(http, base, "events"))["events"] == []
    [job] = (await inspect(http, base, "consent-jobs"))["jobs"]
    assert job["results"] == [
        {"index": 0, "profile_id": None, "result": f"skipped: profile {ada} does not exist"}
    ]


async def test_profile_import_still_answers_with_the_profile_at_once(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await post(
        http, f"{held.url}/api/profile-import", upsert(email="ada@example.com")
    )
    assert status == 201
    assert (await profile_of(http, held.url, email="ada@example.com"))["id"] == answer["data"]["id"]
    assert (await inspect(http, held.url, "stats"))["pending_jobs"] == 0


async def test_consent_suppression_and_client_jobs_wait_too(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = held.url
    bob = await create(http, base, email="bob@example.com")
    await post(
        http,
        f"{base}/api/lists/NEWS01/relationships/profiles",
        {"data": [{"type": "profile", "id": bob}]},
    )
    await send(http, f"{base}{SUBSCRIBE}", consent_job("create", consenting("ada@example.com")))
    one = await send(http, f"{base}{SUPPRESS}", suppression_job("create", "cy@example.com"))
    whole_list = await send(http, f"{base}{SUPPRESS}", suppression_job("create", list_id="NEWS01"))
    assert one["data"]["attributes"]["status"] == "queued"
    assert whole_list["data"]["attributes"]["total_count"] == 1  # bob, the list's one member
    await send(http, f"{base}/client/events{CLIENT}", event(who=profile(email="dee@example.com")))
    eve = {"data": {"type": "profile", "attributes": {"email": "eve@example.com"}}}
    await send(http, f"{base}/client/profiles{CLIENT}", eve)
    await send(
        http,
        f"{base}/client/subscriptions{CLIENT}",
        client_subscription("fay@example.com", "NEWS01"),
    )
    stats = await inspect(http, base, "stats")
    assert stats["pending_job_kinds"] == {
        "subscribe": 1,
        "suppress": 2,
        "events": 1,
        "client_profile": 1,
        "client_subscription": 1,
    }
    assert await emails(http, base) == ["bob@example.com"]
    assert (await inspect(http, base, "consent-jobs"))["jobs"] == []

    await jobs(http, base, flush=True)
    assert await emails(http, base) == [
        "bob@example.com",
        "ada@example.com",
        "cy@example.com",
        "dee@example.com",
        "eve@example.com",
        "fay@example.com",
    ]
    for subscribed in ("ada@example.com", "fay@example.com"):
        consent = (await profile_of(http, base, email=subscribed))["consent"]
        assert consent["email.marketing"]["state"] == "subscribed"
    for suppressed in ("cy@example.com", "bob@example.com"):
        held_back = (await profile_of(http, base, email=suppressed))["suppressions"]
        assert [s["reason"] for s in held_back] == ["USER_SUPPRESSED"]
    kinds = [job["kind"] for job in (await inspect(http, base, "consent-jobs"))["jobs"]]
    assert kinds == ["subscribe", "suppress", "suppress", "client_subscription"]


async def test_without_a_delay_every_job_is_applied_before_the_answer(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = sandbox.url
    body = bulk_events(bulk_entry(profile(email="ada@example.com"), bulk_event(unique_id="e1")))
    assert (await post(http, f"{base}{BULK}", body))[0] == 202
    assert [e["unique_id"] for e in (await inspect(http, base, "events"))["events"]] == ["e1"]
    status, answer, _ = await post(
        http, f"{base}{IMPORT}", import_body({"email": "bob@example.com"})
    )
    assert status == 202 and answer["data"]["attributes"]["status"] == "queued"  # as Klaviyo's
    job = (await get(http, f"{base}{IMPORT}/{answer['data']['id']}"))[1]["data"]["attributes"]
    assert (job["status"], job["completed_count"]) == ("complete", 1)
    state = await jobs(http, base)
    assert (state["job_delay_seconds"], state["pending"], state["queued"]) == (0.0, 0, [])
    assert state["applied"] == {"events": 1, "profile_import": 1}
    stats = await inspect(http, base, "stats")
    assert (stats["pending_jobs"], stats["pending_job_kinds"], stats["job_delay_seconds"]) == (
        0,
        {},
        0.0,
    )


async def test_reset_drops_waiting_jobs_and_restores_the_configured_delay(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = sandbox.url
    assert (await jobs(http, base, job_delay_seconds=HOUR))["job_delay_seconds"] == HOUR
    assert (await post(http, f"{base}/api/events", event()))[0] == 202
    assert (await jobs(http, base))["pending"] == 1
    async with http.post(f"{base}/sandbox/reset") as r:
        assert r.status == 200
    state = await jobs(http, base)
    assert (state["pending"], state["job_delay_seconds"], state["applied"]) == (0, 0.0, {})
    assert (await inspect(http, base, "events"))["events"] == []


@pytest.mark.parametrize(
    "change",
    [
        {"job_delay_seconds": -1},
        {"job_delay_seconds": 3601},
        {"job_delay_seconds": "1"},
        {"job_delay_seconds": True},
        {"flush": "yes"},
    ],
)
async def test_the_jobs_control_refuses_bad_values(
    sandbox: SandboxServer, http: aiohttp.ClientSession, change: dict[str, Any]
) -> None:
    async with http.post(f"{sandbox.url}/sandbox/jobs", json=change) as r:
        assert r.status == 400
    assert (await jobs(http, sandbox.url))["job_delay_seconds"] == 0.0


def test_the_config_refuses_a_delay_out_of_range() -> None:
    with pytest.raises(ValueError, match="job_delay_seconds"):
        SandboxConfig(job_delay_seconds=-0.5)
    with pytest.raises(ValueError, match="job_delay_seconds"):
        SandboxConfig(job_delay_seconds=3601)


async def test_the_pages_show_waiting_jobs(
    held: SandboxServer, http: aiohttp.ClientSession
) -> None:
    await post(http, f"{held.url}/api/events", event())
    page = {"Accept": "text/html"}
    async with http.get(f"{held.url}/sandbox/jobs", headers=page) as r:
        text = await r.text()
    assert r.status == 200 and "<td>events</td>" in text and "Applied 3600.0 s after" in text
    async with http.get(f"{held.url}/sandbox/", headers=page) as r:
        overview = await r.text()
    assert '<div class="tile" data-count="Jobs waiting"><b>1</b>' in overview


def test_the_sandbox_command_takes_the_job_delay() -> None:
    refused = cli(clean_env(), "sandbox", "--job-delay", "-1")
    assert refused.code == 2 and "job_delay_seconds must be within [0, 3600]" in refused.stderr
    port = free_port()
    command = [sys.executable, "-m", "stream", "sandbox", "--port", str(port), "--job-delay", "2.5"]
    with subprocess.Popen(
        command, env=clean_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().startswith("Klaviyo sandbox at ")

            async def delay() -> Any:
                async with aiohttp.ClientSession() as http:
                    return (await jobs(http, f"http://127.0.0.1:{port}"))["job_delay_seconds"]

            assert asyncio.run(delay()) == 2.5
        finally:
            child.terminate()
            child.wait(timeout=30)
