"""The /sandbox/ pages as a person sees them: a real headless Chromium, after real traffic.

Chromium comes from Debian (`apt-get install chromium`; scripts/test installs it) and is driven
by Playwright through `executable_path`. Without it a developer machine skips these tests; in
CI (`CI=true`) they fail instead. Screenshots are kept in the test's tmp directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer, SeedList
from stream.local.sandbox.inspection import wants_html
from tests.support import wait_until
from tests.support.prometheus import in_ci
from tests.support.sandbox import (
    bulk_entry,
    bulk_event,
    bulk_events,
    consent_job,
    consenting,
    create,
    event,
    inspect,
    merge_body,
    post,
    profile,
)

CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
XSS = "<script>alert('pwned')</script>"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not in_ci(),
    reason="chromium not installed (apt-get install -y chromium); CI=true makes this fail",
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium page (Debian's build, driven by Playwright)."""
    if CHROMIUM is None:
        pytest.fail("chromium not found: apt-get install -y chromium (scripts/test does)")
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        chromium = await driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = await chromium.new_page(viewport={"width": 1280, "height": 900})
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        page.dialogs = dialogs  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            await chromium.close()


@pytest.fixture
async def busy() -> AsyncIterator[dict[str, Any]]:
    """A sandbox after a little of everything: upserts, events, a merge, consent, a 400, 429s."""
    config = SandboxConfig(
        lists=(SeedList("NEWS01", "Newsletter"),), merge_delay_seconds=0, time_scale=60
    )
    async with SandboxServer(config) as sb, aiohttp.ClientSession() as http:
        base = sb.url
        ada = await create(http, base, email="ada@example.com", first_name="Ada")
        bob = await create(http, base, email="bob@example.com")
        stray = await create(http, base, external_id="bob-app")
        hostile = await create(
            http, base, external_id="x-1", first_name=XSS, properties={XSS: "<b>bold?</b>"}
        )
        timeline = [
            ("Viewed Product", "2024-05-01T10:00:00Z"),
            ("Added to Cart", "2024-05-02T10:00:00Z"),
        ]
        for (metric, when), uid in zip(timeline, ("v1", "c1"), strict=True):
            body = event(metric, who=profile(email="ada@example.com"), time=when, unique_id=uid)
            assert (await post(http, f"{base}/api/events", body))[0] == 202
        entries = bulk_events(
            bulk_entry(
                profile(email="ada@example.com"),
                bulk_event("Placed Order", time="2024-05-03T10:00:00Z", unique_id="o1", value=42.5),
            ),
            bulk_entry(
                profile(external_id="bob-app"), bulk_event("Viewed Product", unique_id="b1")
            ),
        )
        assert (await post(http, f"{base}/api/event-bulk-create-jobs", entries))[0] == 202
        assert (await post(http, f"{base}/api/profile-merge", merge_body(bob, stray)))[0] == 201
        subscribe = consent_job("create", consenting("ada@example.com"), list_id="NEWS01")
        assert (await post(http, f"{base}/api/profile-subscription-bulk-create-jobs", subscribe))[
            0
        ] == 202
        assert (await post(http, f"{base}/api/events", event(metric="m" * 200)))[0] == 400
        deletion = {
            "data": {
                "type": "data-privacy-deletion-job",
                "attributes": {
                    "profile": {
                        "data": {"type": "profile", "attributes": {"email": "no@example.com"}}
                    }
                },
            }
        }
        statuses = [
            (await post(http, f"{base}/api/data-privacy-deletion-jobs", deletion))[0]
            for _ in range(4)
        ]
        assert statuses == [202, 202, 202, 429]  # burst 3/s, windows stretched 60x

        async def merged() -> bool:
            return (await inspect(http, base, "stats"))["merges"] == 1

        await wait_until(merged, timeout=30, what="the merge", poll=0.02)
        yield {"url": base, "ada": ada, "bob": bob, "stray": stray, "hostile": hostile}


async def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


async def _cells(page: Any, selector: str = "table") -> list[list[str]]:
    """The body rows of the first table matching `selector`, as the visible cell texts."""
    rows = page.locator(f"{selector} >> nth=0").locator("tbody tr")
    return [
        [text.strip() for text in await rows.nth(i).locator("td").all_inner_texts()]
        for i in range(await rows.count())
    ]


@needs_chromium
async def test_a_person_sees_counts_profiles_and_a_timeline(
    busy: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    page = browser
    await page.goto(f"{busy['url']}/sandbox/")
    counts = {
        label: await page.locator(f'.tile[data-count="{label}"] b').inner_text()
        for label in ("Profiles", "Events", "Merges applied", "Lists", "Throttled (429)")
    }
    assert counts == {
        "Profiles": "3",
        "Events": "4",
        "Merges applied": "1",
        "Lists": "1",
        "Throttled (429)": "1",
    }
    await _shot(page, tmp_path, "overview")

    await page.get_by_role("link", name="Profiles", exact=True).first.click()
    assert await page.locator("h1").inner_text() == "Profiles"
    rows = await _cells(page)
    by_id = {row[0]: row for row in rows}
    assert set(by_id) == {busy["ada"], busy["bob"], busy["hostile"]}
    assert by_id[busy["ada"]][1] == "ada@example.com"
    assert by_id[busy["ada"]][5] == "subscribed" and by_id[busy["ada"]][7] == "NEWS01"
    assert by_id[busy["ada"]][8] == "3"  # events
    assert by_id[busy["bob"]][3] == "bob-app"  # inherited from the merged profile
    await _shot(page, tmp_path, "profiles")

    await page.get_by_role("link", name=busy["ada"]).click()
    assert await page.locator("h1").inner_text() == f"Profile {busy['ada']}"
    timeline = await _cells(page, "h2:has-text('Event timeline') + table")
    assert [(row[0], row[1]) for row in timeline] == [
        ("2024-05-03T10:00:00+00:00", "Placed Order"),
        ("2024-05-02T10:00:00+00:00", "Added to Cart"),
        ("2024-05-01T10:00:00+00:00", "Viewed Product"),
    ]
    assert timeline[0][2] == "42.5"
    consent = await _cells(page, "h2:has-text('Consent') + table")
    assert consent[0][:3] == ["email.marketing", "subscribed", "yes"]
    await _shot(page, tmp_path, "profile")


@needs_chromium
async def test_merges_and_rate_limits_are_shown(
    busy: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    page = browser
    await page.goto(f"{busy['url']}/sandbox/merges")
    [merge] = await _cells(page)
    assert merge[1:4] == [busy["stray"], busy["bob"], "applied"]
    await page.goto(f"{busy['url']}/sandbox/stats")
    endpoints = {row[0]: row for row in await _cells(page)}
    assert endpoints["POST /api/data-privacy-deletion-jobs"][1:] == ["4", "202: 3, 429: 1"]
    assert endpoints["POST /api/events"][2] == "202: 2, 400: 1"
    windows = await _cells(page, "h2:has-text('Rate-limit windows') + table")
    burst = next(
        row
        for row in windows
        if row[0] == "POST /api/data-privacy-deletion-jobs" and row[1] == "burst"
    )
    assert burst[2:5] == ["3", "3", "0"]  # used, limit, remaining
    await _shot(page, tmp_path, "stats")
    # a merged id's page is the profile it became
    await page.goto(f"{busy['url']}/sandbox/profiles/{busy['stray']}")
    assert await page.locator("h1").inner_text() == f"Profile {busy['bob']}"


@needs_chromium
async def test_stored_markup_is_shown_as_text_never_run(
    busy: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    page = browser
    for path in (f"/sandbox/profiles/{busy['hostile']}", "/sandbox/profiles", "/sandbox/requests"):
        await page.goto(busy["url"] + path)
        assert await page.locator("script").count() == 0
        assert await page.locator("main b").count() == 0
    await page.goto(f"{busy['url']}/sandbox/profiles/{busy['hostile']}")
    shown = await page.locator("main").inner_text()
    assert XSS in shown and "<b>bold?</b>" in shown
    assert page.dialogs == []
    await _shot(page, tmp_path, "hostile")


async def test_json_stays_for_programs_and_html_is_chosen_by_accept(
    busy: dict[str, Any],
) -> None:
    url = f"{busy['url']}/sandbox/profiles"
    cases = {
        None: "application/json",  # aiohttp's default */*
        "application/json": "application/json",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8": "text/html",
        "application/json, text/html;q=0.5": "application/json",
        "text/html;q=0, */*": "application/json",
        "text/*": "text/html",
    }
    async with aiohttp.ClientSession() as http:
        for accept, expected in cases.items():
            headers = {"Accept": accept} if accept else {}
            async with http.get(url, headers=headers) as r:
                assert r.status == 200 and r.content_type == expected, accept
                if expected == "application/json":
                    assert len((await r.json())["profiles"]) == 3
                else:
                    assert "<table>" in await r.text()
        async with http.get(f"{busy['url']}/sandbox/profiles/{busy['ada']}") as r:
            document = await r.json()
        assert [e["unique_id"] for e in document["events"]] == ["v1", "c1", "o1"]  # arrival
        assert document["profile"]["consent"]["email.marketing"]["state"] == "subscribed"
        async with http.get(f"{busy['url']}/sandbox/profiles/01GHOST") as r:
            assert r.status == 404
        async with http.get(
            f"{busy['url']}/sandbox/profiles/{busy['stray']}", allow_redirects=False
        ) as r:
            assert r.status == 302 and r.headers["Location"].endswith(busy["bob"])
        stats = await inspect(http, busy["url"], "stats")
    assert "GET (unmatched)" not in stats["requests"]  # the pages are not API traffic


def test_accept_header_preferences() -> None:
    class Request:
        def __init__(self, accept: str) -> None:
            self.headers = {"Accept": accept}

    assert wants_html(Request("text/html"))  # type: ignore[arg-type]
    assert not wants_html(Request("*/*"))  # type: ignore[arg-type]
    assert not wants_html(Request(""))  # type: ignore[arg-type]
    assert wants_html(Request("application/json;q=0.4, text/html;q=0.5"))  # type: ignore[arg-type]
    assert not wants_html(Request("text/html;q=bogus"))  # type: ignore[arg-type]
