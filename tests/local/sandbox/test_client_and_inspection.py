"""Client (public-key) endpoints, the /sandbox/ inspection endpoints, and the runners."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request

import aiohttp

from stream.local.sandbox import SandboxConfig, SandboxServer, SandboxThread
from tests.support.sandbox import (
    API_KEY,
    HEADERS,
    bulk_event,
    event,
    inspect,
    post,
    profile,
    upsert,
)

CLIENT_HEADERS = {"revision": "2026-07-15", "Content-Type": "application/vnd.api+json"}


async def test_client_endpoints_use_company_id_not_a_key(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/client/events?company_id=SBXPUB"
    assert (await post(http, url, event(who=profile(anonymous_id="anon-9")), CLIENT_HEADERS))[
        0
    ] == 202
    status, body, _ = await post(http, f"{sandbox.url}/client/events", event(), CLIENT_HEADERS)
    assert status == 400 and body["errors"][0]["source"] == {"parameter": "company_id"}
    status, _, _ = await post(
        http, f"{sandbox.url}/client/events?company_id=XXXXXX", event(), CLIENT_HEADERS
    )
    assert status == 400
    client_profile = {
        "data": {
            "type": "profile",
            "attributes": {"anonymous_id": "anon-9", "email": "c@example.com"},
        }
    }
    assert (
        await post(
            http, f"{sandbox.url}/client/profiles?company_id=SBXPUB", client_profile, CLIENT_HEADERS
        )
    )[0] == 202
    bulk = {
        "data": {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": profile(email="c@example.com")},
                "events": {
                    "data": [
                        {"type": "event", "attributes": bulk_event(unique_id=str(i))}
                        for i in range(3)
                    ]
                },
            },
        }
    }
    assert (
        await post(
            http, f"{sandbox.url}/client/event-bulk-create?company_id=SBXPUB", bulk, CLIENT_HEADERS
        )
    )[0] == 202
    profiles = (await inspect(http, sandbox.url, "profiles"))["profiles"]
    assert len(profiles) == 1 and profiles[0]["attributes"]["email"] == "c@example.com"
    assert len(sandbox.store.events) == 4


async def test_request_log_and_stats(sandbox: SandboxServer, http: aiohttp.ClientSession) -> None:
    await post(http, f"{sandbox.url}/api/profile-import", upsert(email="a@example.com"))
    await post(http, f"{sandbox.url}/api/profile-import", upsert(email="a@example.com"))
    await post(http, f"{sandbox.url}/api/profile-import/", upsert(email="bad"))
    log = await inspect(http, sandbox.url, "requests")
    assert [r["status"] for r in log["requests"]] == [201, 200, 400]
    first = log["requests"][0]
    assert first["method"] == "POST" and first["path"] == "/api/profile-import"
    assert (
        first["body"] == upsert(email="a@example.com")
        and first["operation"] == "create_or_update_profile"
    )
    assert API_KEY not in json.dumps(log)
    since = await inspect(http, sandbox.url, f"requests?since={log['requests'][1]['seq']}")
    assert [r["status"] for r in since["requests"]] == [400]
    stats = await inspect(http, sandbox.url, "stats")
    assert stats["requests"]["POST /api/profile-import"] == {"201": 1, "200": 1, "400": 1}
    assert stats["profiles"] == 1 and stats["requests_total"] == 3
    async with http.post(f"{sandbox.url}/sandbox/reset") as r:
        assert r.status == 200
    assert (await inspect(http, sandbox.url, "requests"))["requests"] == []
    assert (await inspect(http, sandbox.url, "stats"))["profiles"] == 0


async def test_request_log_is_bounded(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(request_log_limit=3)) as sb:
        for i in range(5):
            await post(http, f"{sb.url}/api/events", event(unique_id=str(i)))
        log = await inspect(http, sb.url, "requests")
        assert [r["body"]["data"]["attributes"]["unique_id"] for r in log["requests"]] == [
            "2",
            "3",
            "4",
        ]
        assert log["evicted"] == 2


def test_sandbox_thread_serves_synchronous_callers() -> None:
    with SandboxThread(SandboxConfig()) as sb:
        assert sb.url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            f"{sb.url}/api/events",
            data=json.dumps(event()).encode(),
            headers=HEADERS,
            method="POST",
        )
        with urllib.request.urlopen(request) as response:
            assert response.status == 202
        assert len(sb.store.events) == 1
    sb.stop()  # idempotent


async def test_run_prints_its_url_and_stops_on_sigterm() -> None:
    code = "from stream.local.sandbox import run, SandboxConfig; run(SandboxConfig())"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert line.startswith("Klaviyo sandbox at http://127.0.0.1:")
    base = line.split(" at ")[1].strip()
    pages = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert pages.strip() == f"sandbox pages (open in a browser): {base}/sandbox/"
    async with aiohttp.ClientSession() as http:
        stats = await inspect(http, base, "stats")
        async with http.get(f"{base}/sandbox/", headers={"Accept": "text/html"}) as r:
            assert r.status == 200 and "Klaviyo sandbox" in await r.text()
    assert stats["requests_total"] == 0
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
