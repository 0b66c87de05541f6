"""Catalog bulk jobs at the sandbox: queued → processing → complete, per-resource errors, the
create/update refusal model, the 500-job cap, read-back, back in stock and mapped metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support import wait_until
from tests.support.catalog import (
    PREFIX,
    by_id,
    catalog,
    delete,
    item,
    job_status,
    submit,
    update,
    variant,
)
from tests.support.sandbox import HEADERS, event, get, post

QUICK = SandboxConfig(catalog_job_seconds=0.05, catalog_job_seconds_per_resource=0.0)


@pytest.fixture
async def quick() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(QUICK) as server:
        yield server


async def finished(
    http: aiohttp.ClientSession, base: str, kind: str, action: str, answer: Any
) -> dict[str, Any]:
    """Wait for the job of a 202 `answer` to complete; its final `data`."""
    job_id = answer["data"]["id"]
    seen: dict[str, Any] = {}

    async def complete() -> bool:
        seen.update(await job_status(http, base, kind, action, job_id))
        return bool(seen["attributes"]["status"] == "complete")

    await wait_until(complete, timeout=10, what="the job to complete", poll=0.02)
    return seen


async def test_a_job_is_queued_then_processing_then_complete(http: aiohttp.ClientSession) -> None:
    config = SandboxConfig(catalog_job_seconds=0.4, catalog_job_seconds_per_resource=0.0)
    async with SandboxServer(config) as sandbox:
        status, answer, _ = await submit(http, sandbox.url, "item", "create", item("A"), item("B"))
        assert status == 202, answer
        attributes = answer["data"]["attributes"]
        assert attributes["status"] == "queued" and attributes["total_count"] == 2
        assert (await catalog(http, sandbox.url))["items"] == [], "nothing applied yet"
        states = set()

        async def complete() -> bool:
            data = await job_status(http, sandbox.url, "item", "create", answer["data"]["id"])
            states.add(data["attributes"]["status"])
            return bool(data["attributes"]["status"] == "complete")

        await wait_until(complete, timeout=10, what="completion", poll=0.02)
    assert states >= {"processing", "complete"}, states


async def test_create_refuses_an_existing_id_and_update_or_delete_a_missing_one(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    _, first, _ = await submit(http, base, "item", "create", item("A", price=1.0))
    await finished(http, base, "item", "create", first)
    _, again, _ = await submit(http, base, "item", "create", item("B"), item("A", price=9.0))
    job = (await finished(http, base, "item", "create", again))["attributes"]
    assert (job["completed_count"], job["failed_count"]) == (1, 1)
    [error] = job["errors"]
    assert error["source"]["pointer"] == "/data/attributes/items/data/1/attributes/external_id"
    assert "already exists" in error["detail"]
    _, missing, _ = await submit(
        http, base, "item", "update", update("item", "Z", title="z"), update("item", "A", price=2.0)
    )
    job = (await finished(http, base, "item", "update", missing))["attributes"]
    assert [e["source"]["pointer"] for e in job["errors"]] == ["/data/attributes/items/data/0/id"]
    assert job["errors"][0]["code"] == "not_found"
    _, gone, _ = await submit(http, base, "item", "delete", delete("item", "Z"))
    job = (await finished(http, base, "item", "delete", gone))["attributes"]
    assert job["failed_count"] == 1 and job["errors"][0]["code"] == "not_found"
    items = by_id((await catalog(http, base))["items"])
    assert set(items) == {"A", "B"} and items["A"]["price"] == 2.0, (
        "the refused create changed nothing"
    )


async def test_a_variant_needs_its_item_and_goes_with_it(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    _, orphan, _ = await submit(http, base, "variant", "create", variant("V0", "NOPE"))
    job = (await finished(http, base, "variant", "create", orphan))["attributes"]
    assert job["errors"][0]["source"]["pointer"].endswith("/relationships/item/data/id")
    await finished(http, base, "item", "create", (await submit(http, base, "item", "create",
                                                                item("A")))[1])  # fmt: skip
    _, made, _ = await submit(
        http, base, "variant", "create", variant("V1", "A", inventory_quantity=0)
    )
    await finished(http, base, "variant", "create", made)
    _, stocked, _ = await submit(
        http, base, "variant", "update", update("variant", "V1", inventory_quantity=5)
    )
    await finished(http, base, "variant", "update", stocked)
    variants = by_id((await catalog(http, base))["variants"])
    assert variants["V1"]["inventory_quantity"] == 5 and variants["V1"]["item"] == PREFIX + "A"
    _, removed, _ = await submit(http, base, "item", "delete", delete("item", "A"))
    await finished(http, base, "item", "delete", removed)
    assert (await catalog(http, base))["variants"] == []


async def test_bad_requests_are_refused_at_once_naming_the_entry(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    status, body, _ = await submit(
        http, base, "item", "create", *[item(f"I{i}") for i in range(101)]
    )
    assert status == 400 and "At most 100" in body["errors"][0]["detail"]
    unprefixed = {"type": "catalog-item", "id": "A", "attributes": {}}
    status, body, _ = await submit(http, base, "item", "update", update("item", "A"), unprefixed)
    assert status == 400
    assert body["errors"][0]["source"]["pointer"] == "/data/attributes/items/data/1/id"
    status, body, _ = await submit(http, base, "item", "create", item("A", colour="red"))
    assert status == 400 and "colour" in body["errors"][0]["detail"]
    status, body, _ = await submit(http, base, "item", "create", item("A"), item("A"))
    assert status == 400 and "more than once" in body["errors"][0]["detail"]
    assert (await catalog(http, base))["jobs"] == {}


async def test_at_most_the_cap_of_jobs_are_in_progress(http: aiohttp.ClientSession) -> None:
    config = SandboxConfig(catalog_job_seconds=0.5, catalog_jobs_cap=2)
    async with SandboxServer(config) as sandbox:
        for name in ("A", "B"):
            status, _, _ = await submit(http, sandbox.url, "item", "create", item(name))
            assert status == 202
        status, body, headers = await submit(http, sandbox.url, "item", "create", item("C"))
        assert status == 429 and "Too many catalog jobs" in body["errors"][0]["detail"]
        assert int(headers["Retry-After"]) >= 1

        async def room() -> bool:
            return (await catalog(http, sandbox.url))["in_progress"] < 2

        await wait_until(room, timeout=10, what="a job to complete", poll=0.02)
        status, _, _ = await submit(http, sandbox.url, "item", "create", item("C"))
        assert status == 202
        snapshot = await catalog(http, sandbox.url)
    assert snapshot["most_in_progress"] == 2 and snapshot["refused_over_cap"] == 1


async def test_an_injected_failure_is_a_per_resource_error_of_the_next_job(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    async with http.post(
        f"{base}/sandbox/catalog/faults", json={"fail": [{"id": "B", "detail": "bad image"}]}
    ) as resp:
        assert resp.status == 200
    _, answer, _ = await submit(http, base, "item", "create", item("A"), item("B"))
    job = (await finished(http, base, "item", "create", answer))["attributes"]
    assert [e["detail"] for e in job["errors"]] == ["bad image"]
    assert job["errors"][0]["source"]["pointer"] == "/data/attributes/items/data/1"
    _, again, _ = await submit(http, base, "item", "create", item("B"))
    assert (await finished(http, base, "item", "create", again))["attributes"]["failed_count"] == 0


async def test_read_back_filters_by_ids_and_pages(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    _, made, _ = await submit(http, base, "item", "create", *[item(f"I{i}") for i in range(5)])
    await finished(http, base, "item", "create", made)
    wanted = f"any(ids,['{PREFIX}I1','{PREFIX}I3','{PREFIX}missing'])"
    status, body, _ = await get(http, f"{base}/api/catalog-items", {"filter": wanted})
    assert status == 200 and [r["id"] for r in body["data"]] == [PREFIX + "I1", PREFIX + "I3"]
    status, body, _ = await get(http, f"{base}/api/catalog-items", {"page[size]": "2"})
    assert len(body["data"]) == 2 and "next" in body["links"]
    status, body, _ = await get(http, f"{base}/api/catalog-items", {"filter": "equals(sku,'x')"})
    assert status == 400 and body["errors"][0]["source"]["parameter"] == "filter"


def subscription(variant_id: str, channels: list[str], **who: str) -> dict[str, Any]:
    return {
        "data": {
            "type": "back-in-stock-subscription",
            "attributes": {
                "channels": channels,
                "profile": {"data": {"type": "profile", "attributes": who}},
            },
            "relationships": {
                "variant": {"data": {"type": "catalog-variant", "id": PREFIX + variant_id}}
            },
        }
    }


async def test_back_in_stock_needs_a_known_variant_and_the_channels_identifier(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    base = quick.url
    url = f"{base}/api/back-in-stock-subscriptions"
    status, body, _ = await post(http, url, subscription("V1", ["EMAIL"], email="ada@x.io"))
    assert status == 400 and "does not exist" in body["errors"][0]["detail"]
    await finished(http, base, "item", "create", (await submit(http, base, "item", "create",
                                                                item("A")))[1])  # fmt: skip
    _, made, _ = await submit(http, base, "variant", "create", variant("V1", "A"))
    await finished(http, base, "variant", "create", made)
    status, body, _ = await post(http, url, subscription("V1", ["SMS"], email="ada@x.io"))
    assert status == 400 and "phone_number" in body["errors"][0]["detail"]
    status, _, _ = await post(http, url, subscription("V1", ["EMAIL"], email="ada@x.io"))
    assert status == 202
    client = f"{base}/client/back-in-stock-subscriptions?company_id=SBXPUB"
    headers = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    body = subscription("V1", ["SMS"], phone_number="+13239169023")
    status, answer, _ = await post(http, client, body, headers)
    assert status == 202, answer
    stock = (await catalog(http, base))["back_in_stock"]
    assert [(s["variant"], s["channels"]) for s in stock] == [
        (PREFIX + "V1", ["EMAIL"]), (PREFIX + "V1", ["SMS"])
    ]  # fmt: skip


async def test_a_mapped_metric_points_at_a_metric_that_exists(http: aiohttp.ClientSession) -> None:
    async with SandboxServer(SandboxConfig(time_scale=0.001)) as sandbox:
        base = sandbox.url
        status, body, _ = await get(http, f"{base}/api/mapped-metrics")
        assert status == 200 and len(body["data"]) == 7
        assert all(m["relationships"]["metric"]["data"] is None for m in body["data"])
        patch = {"data": {"type": "mapped-metric", "id": "revenue", "relationships": {
            "metric": {"data": {"type": "metric", "id": "NOPE00"}}}}}  # fmt: skip
        async with http.patch(f"{base}/api/mapped-metrics/revenue", json=patch,
                              headers=HEADERS) as resp:  # fmt: skip
            assert resp.status == 400
        status, _, _ = await post(http, f"{base}/api/events", event("Placed Order"))
        assert status == 202
        _, metrics, _ = await get(http, f"{base}/api/metrics")
        [placed] = [m for m in metrics["data"] if m["attributes"]["name"] == "Placed Order"]
        patch["data"]["relationships"]["metric"]["data"]["id"] = placed["id"]
        done, attempts = 1, 0  # the refused PATCH above counts against the day too
        while done < 30 and attempts < 100:  # the steady window (15 a scaled minute) refuses some
            attempts += 1
            async with http.patch(f"{base}/api/mapped-metrics/revenue", json=patch,
                                  headers=HEADERS) as resp:  # fmt: skip
                done += resp.status == 200
                if resp.status == 429:
                    await asyncio.sleep(0.07)  # past the scaled steady window (60 ms)
        await asyncio.sleep(0.2)  # every minute-window is fresh; the day (86 s) is not
        async with http.patch(f"{base}/api/mapped-metrics/revenue", json=patch,
                              headers=HEADERS) as resp:  # fmt: skip
            thirty_first = resp.status
        _, body, _ = await get(http, f"{base}/api/mapped-metrics")
    assert done == 30 and thirty_first == 429, "30 a day"
    mapped = {m["id"]: m["relationships"]["metric"]["data"] for m in body["data"]}
    assert mapped["revenue"] == {"type": "metric", "id": placed["id"]}


async def test_the_catalog_page_shows_what_the_catalog_holds(
    quick: SandboxServer, http: aiohttp.ClientSession
) -> None:
    _, made, _ = await submit(http, quick.url, "item", "create", item("Blue <Shirt>", price=3.5))
    await finished(http, quick.url, "item", "create", made)
    async with http.get(f"{quick.url}/sandbox/catalog", headers={"Accept": "text/html"}) as resp:
        page = await resp.text()
    assert resp.status == 200 and "Blue &lt;Shirt&gt;" in page and "<script" not in page
