"""Rate limits with Klaviyo's headers, and fault injection's mix of failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from stream.local.sandbox.config import OPENAPI_DIR
from stream.local.sandbox.ratelimit import RateLimiter
from stream.local.sandbox.spec import load_operations
from tests.support import wait_until
from tests.support.sandbox import HEADERS, event, inspect, post

JOB_URL = "/api/profile-bulk-import-jobs/01NOJOB"  # burst 10/s, steady 150/m; a 404 still counts


async def _get_status(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] = HEADERS
) -> tuple[int, dict[str, str]]:
    async with http.get(url, headers=headers) as r:
        await r.read()
        return r.status, dict(r.headers)


async def test_burst_exceeded_gives_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(time_scale=0.5)) as sb:
        answers = [await _get_status(http, sb.url + JOB_URL) for _ in range(11)]
        statuses = [status for status, _ in answers]
        assert statuses[:10] == [404] * 10 and statuses[10] == 429
        for _, headers in answers:
            assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= headers.keys()
        assert answers[0][1]["RateLimit-Limit"] == "150"
        assert int(answers[9][1]["RateLimit-Remaining"]) == 140
        throttled = answers[10][1]
        assert int(throttled["Retry-After"]) >= 1
        async with http.get(sb.url + JOB_URL, headers=HEADERS) as r:
            body = await r.json(content_type=None)
        assert body["errors"][0]["code"] == "throttled"

        async def window_rolled_over() -> bool:
            return (await _get_status(http, sb.url + JOB_URL))[0] != 429

        await wait_until(window_rolled_over, timeout=10, what="the burst window", poll=0.02)
        assert (await inspect(http, sb.url, "stats"))["throttled"] >= 2


async def test_steady_window_exhausts_remaining(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(time_scale=0.05)) as sb:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline
            status, headers = await _get_status(http, sb.url + JOB_URL)
            if status == 429 and headers["RateLimit-Remaining"] == "0":
                break
            if status == 429:
                await asyncio.sleep(0.005)


async def test_budget_is_shared_by_every_key_of_the_account(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(api_keys=("pk_one", "pk_two"))) as sb:
        one = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_one"}
        two = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_two"}
        for _ in range(10):
            assert (await _get_status(http, sb.url + JOB_URL, one))[0] == 404
        assert (await _get_status(http, sb.url + JOB_URL, two))[0] == 429


async def test_rate_limits_can_be_switched_off(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sb:
        statuses = {(await _get_status(http, sb.url + JOB_URL))[0] for _ in range(15)}
        assert statuses == {404}


async def _fire(url: str, index: int) -> str:
    """One event on a fresh connection; the outcome's label."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            status, _, headers = await post(session, url, event(unique_id=f"f-{index}"))
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return "dropped"
    if status == 429:
        assert int(headers["Retry-After"]) >= 1
    return str(status)


async def test_fault_injection_mixes_errors_and_drops(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(fault_rate=1.0, fault_seed=7, rate_limits=False)) as sb:
        outcomes = Counter([await _fire(f"{sb.url}/api/events", i) for i in range(80)])
        assert {"500", "503", "429", "dropped"} <= outcomes.keys()
        assert "202" not in outcomes
        stats = await inspect(http, sb.url, "stats")
        assert sum(stats["faults"].values()) == 80
        # a connection dropped after processing still recorded its event
        assert len(sb.store.events) == stats["faults"].get("drop_after", 0) > 0
        async with http.post(f"{sb.url}/sandbox/faults", json={"fault_rate": 0}) as r:
            assert (await r.json()) == {"fault_rate": 0.0, "hold": False, "waiting": 0}
        assert await _fire(f"{sb.url}/api/events", 1000) == "202"


async def test_held_requests_wait_unanswered_and_a_dead_client_is_never_applied(
    http: aiohttp.ClientSession,
) -> None:
    """`hold` makes Klaviyo slow at will: requests wait (counted) until released; one whose
    client gave up meanwhile is dropped, not applied, as with a real outage."""
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sb:
        async with http.post(f"{sb.url}/sandbox/faults", json={"hold": True}) as r:
            assert (await r.json())["hold"] is True
        patient = asyncio.create_task(_fire(f"{sb.url}/api/events", 1))
        impatient = asyncio.create_task(_fire(f"{sb.url}/api/events", 2))

        async def both_waiting() -> bool:
            return (await inspect(http, sb.url, "faults"))["waiting"] == 2

        await wait_until(both_waiting, timeout=10, what="two held requests")
        impatient.cancel()  # its client disconnects while it is held
        with contextlib.suppress(asyncio.CancelledError):
            await impatient
        assert len(sb.store.events) == 0
        async with http.post(f"{sb.url}/sandbox/faults", json={"hold": False}) as r:
            assert (await r.json())["hold"] is False
        assert await patient == "202"

        async def none_waiting() -> bool:
            return (await inspect(http, sb.url, "faults"))["waiting"] == 0

        await wait_until(none_waiting, timeout=10, what="the held requests let go")
        assert [e.unique_id for e in sb.store.events] == ["f-1"]


async def test_faults_can_be_turned_on_at_run_time(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    assert await _fire(f"{sandbox.url}/api/events", 0) == "202"
    async with http.post(f"{sandbox.url}/sandbox/faults", json={"fault_rate": 1}) as r:
        assert r.status == 200
    assert await _fire(f"{sandbox.url}/api/events", 1) != "202"
    async with http.post(f"{sandbox.url}/sandbox/faults", json={"fault_rate": 2}) as r:
        assert r.status == 400


async def test_holding_one_operation_lets_the_others_answer(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    hold = {"hold": True, "operations": ["bulk_subscribe_profiles"]}
    async with http.post(f"{sandbox.url}/sandbox/faults", json=hold) as r:
        assert (await r.json())["operations"] == ["bulk_subscribe_profiles"]
    subscribe = {"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
        "profiles": {"data": [{"type": "profile", "attributes": {
            "email": "ada@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}},
        }}]}}}}  # fmt: skip
    held = asyncio.create_task(
        post(http, f"{sandbox.url}/api/profile-subscription-bulk-create-jobs", subscribe)
    )

    async def waiting() -> bool:
        return bool((await inspect(http, sandbox.url, "faults"))["waiting"] == 1)

    await wait_until(waiting, timeout=10, what="the subscription held")
    assert await _fire(f"{sandbox.url}/api/events", 0) == "202"  # not held
    assert not held.done() and (await inspect(http, sandbox.url, "consent-jobs"))["jobs"] == []
    async with http.post(f"{sandbox.url}/sandbox/faults", json={"hold": False}) as r:
        assert "operations" not in await r.json()
    assert (await held)[0] == 202
    async with http.post(f"{sandbox.url}/sandbox/faults", json={"operations": ["nope"]}) as r:
        assert r.status == 400


@pytest.mark.parametrize("rate", [0.25])
async def test_partial_fault_rate_lets_most_requests_through(
    http: aiohttp.ClientSession, rate: float
) -> None:
    async with SandboxServer(SandboxConfig(fault_rate=rate, fault_seed=1, rate_limits=False)) as sb:
        outcomes = Counter([await _fire(f"{sb.url}/api/events", i) for i in range(200)])
        assert 100 < outcomes["202"] < 190


@pytest.mark.parametrize(
    ("method", "path", "burst", "steady"),
    [
        ("POST", "/api/profile-subscription-bulk-create-jobs", 75, 750),
        ("POST", "/api/profile-subscription-bulk-delete-jobs", 75, 750),
        ("POST", "/api/profile-suppression-bulk-create-jobs", 75, 750),
        ("POST", "/api/profile-suppression-bulk-delete-jobs", 75, 750),
        ("POST", "/api/lists/NOPE00/relationships/profiles", 10, 150),
        ("DELETE", "/api/lists/NOPE00/relationships/profiles", 10, 150),
        ("POST", "/api/lists", 10, 150),
        ("GET", "/api/lists", 75, 750),
        ("POST", "/api/data-privacy-deletion-jobs", 3, 60),
        ("POST", "/client/subscriptions?company_id=SBXPUB", 350, 750),
    ],
)
async def test_consent_list_and_deletion_endpoints_have_klaviyos_limits(
    http: aiohttp.ClientSession, method: str, path: str, burst: int, steady: int
) -> None:
    """The burst of each operation (x-klaviyo-ratelimit) passes, the next request is a 429.

    Windows are stretched 60x so the burst cannot roll over mid-test; an empty body is a 400
    that still spends quota, as at Klaviyo (the limit is checked before the body).
    """
    async with SandboxServer(SandboxConfig(time_scale=60)) as sb:
        statuses = []
        for _ in range(burst + 1):
            async with http.request(method, sb.url + path, data=b"{}", headers=HEADERS) as r:
                await r.read()
                statuses.append(r.status)
                limit = r.headers["RateLimit-Limit"]
        assert 429 not in statuses[:burst] and statuses[burst] == 429
        assert limit == str(steady)


def test_list_creation_has_a_daily_limit_too() -> None:
    """create_list: burst 10/s, steady 150/m and daily 150/d, on a fake clock."""
    quota = load_operations(OPENAPI_DIR)["create_list"].rate_limit
    assert (quota.burst, quota.steady, quota.daily) == (10, 150, 150)
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    for _ in range(15):  # 150 requests in 15 minutes: 10 a second, once a minute
        assert all(limiter.hit("create_list", quota).allowed for _ in range(10))
        now[0] += 60
    refused = limiter.hit("create_list", quota)
    assert not refused.allowed  # burst and steady windows are fresh: the day is full
    assert int(refused.headers()["Retry-After"]) > 3600
    now[0] = 86_400.0
    assert limiter.hit("create_list", quota).allowed


async def test_chosen_operations_fail_with_one_status_until_cleared(
    http: aiohttp.ClientSession,
) -> None:
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        faults = f"{sandbox.url}/sandbox/faults"
        deletion = {"data": {"type": "data-privacy-deletion-job", "attributes": {
            "profile": {"data": {"type": "profile", "attributes": {"email": "a@x.io"}}}}}}
        status, answer, _ = await post(http, faults, {"fail": {"request_profile_deletion": 400}})
        assert status == 200 and answer["fail"] == {"request_profile_deletion": 400}
        status, body, _ = await post(http, f"{sandbox.url}/api/data-privacy-deletion-jobs",
                                     deletion)  # fmt: skip
        assert status == 400 and body["errors"][0]["code"] == "invalid"
        status, _, _ = await post(http, f"{sandbox.url}/api/events", event())  # others answer
        assert status == 202
        status, answer, _ = await post(http, faults, {"fail": {}})
        assert "fail" not in answer
        status, _, _ = await post(http, f"{sandbox.url}/api/data-privacy-deletion-jobs",
                                  deletion)  # fmt: skip
        assert status == 202
        status, answer, _ = await post(http, faults, {"fail": {"nope": 400}})
        assert status == 400
