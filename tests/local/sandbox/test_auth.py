"""Authentication, the revision header, and that the API key never leaks."""

from __future__ import annotations

import aiohttp

from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support.sandbox import API_KEY, HEADERS, event, inspect, post


async def test_missing_key_is_401_not_authenticated(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(), headers)
    assert status == 401
    assert body["errors"][0]["code"] == "not_authenticated"
    assert body["errors"][0]["status"] == 401


async def test_wrong_key_is_401_and_never_echoed(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    secret = "pk_wrong_secret_1234567890abcdef"
    headers = {**HEADERS, "Authorization": f"Klaviyo-API-Key {secret}"}
    async with http.post(f"{sandbox.url}/api/events", json=event(), headers=headers) as r:
        text = await r.text()
        assert r.status == 401
    assert secret not in text
    async with http.get(f"{sandbox.url}/sandbox/requests") as r:
        log_text = await r.text()
    assert secret not in log_text and "Authorization" not in log_text
    assert sandbox.store.events == []


async def test_good_key_is_never_logged(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await post(http, f"{sandbox.url}/api/events", event())
    assert status == 202
    async with http.get(f"{sandbox.url}/sandbox/requests") as r:
        assert API_KEY not in await r.text()


async def test_bearer_scheme_is_refused(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    headers = {**HEADERS, "Authorization": f"Bearer {API_KEY}"}
    status, _, _ = await post(http, f"{sandbox.url}/api/events", event(), headers)
    assert status == 401


async def test_configured_keys_are_accepted(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(api_keys=("pk_a", "pk_b"))) as sb:
        for key in ("pk_a", "pk_b"):
            headers = {**HEADERS, "Authorization": f"Klaviyo-API-Key {key}"}
            status, _, _ = await post(http, f"{sb.url}/api/events", event(unique_id=key), headers)
            assert status == 202
        headers = {**HEADERS, "Authorization": f"Klaviyo-API-Key {API_KEY}"}
        status, _, _ = await post(http, f"{sb.url}/api/events", event(), headers)
        assert status == 401


async def test_missing_or_malformed_revision_is_400(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    no_revision = {k: v for k, v in HEADERS.items() if k != "revision"}
    status, body, _ = await post(http, f"{sandbox.url}/api/events", event(), no_revision)
    assert status == 400
    assert body["errors"][0]["source"] == {"parameter": "revision"}
    for bad in ("2026-7-15", "latest", "2026-02-30"):
        status, _, _ = await post(
            http, f"{sandbox.url}/api/events", event(), {**HEADERS, "revision": bad}
        )
        assert status == 400, bad
    status, _, _ = await post(
        http, f"{sandbox.url}/api/events", event(), {**HEADERS, "revision": "2026-07-15.pre"}
    )
    assert status == 202
    assert len((await inspect(http, sandbox.url, "events"))["events"]) == 1


async def test_unknown_path_is_json_api_404(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sandbox.url}/api/nothing-here", headers=HEADERS) as r:
        assert r.status == 404
        body = await r.json(content_type=None)
    assert body["errors"][0]["code"] == "not_found"
