"""Catalog request bodies and sandbox read-back for the catalog tests."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.support.sandbox import HEADERS, inspect, post

PREFIX = "$custom:::$default:::"
ENTRIES = {"item": "items", "variant": "variants", "category": "categories"}


def job_body(kind: str, action: str, *entries: dict[str, Any]) -> dict[str, Any]:
    """A catalog bulk job request body."""
    return {
        "data": {
            "type": f"catalog-{kind}-bulk-{action}-job",
            "attributes": {ENTRIES[kind]: {"data": list(entries)}},
        }
    }


def item(external_id: str, **attributes: Any) -> dict[str, Any]:
    """An item create entry (title, description, url filled unless given)."""
    attrs = {"external_id": external_id, "title": external_id, "description": "",
             "url": f"https://shop.example/{external_id}", **attributes}  # fmt: skip
    return {"type": "catalog-item", "attributes": attrs}


def variant(external_id: str, item_id: str, **attributes: Any) -> dict[str, Any]:
    """A variant create entry of item `item_id` (its external id)."""
    attrs = {"external_id": external_id, "title": external_id, "description": "",
             "sku": external_id, "inventory_quantity": 0, "price": 1.0,
             "url": f"https://shop.example/{external_id}", **attributes}  # fmt: skip
    return {
        "type": "catalog-variant",
        "attributes": attrs,
        "relationships": {"item": {"data": {"type": "catalog-item", "id": PREFIX + item_id}}},
    }


def update(kind: str, external_id: str, **attributes: Any) -> dict[str, Any]:
    """An update entry."""
    return {"type": f"catalog-{kind}", "id": PREFIX + external_id, "attributes": attributes}


def delete(kind: str, external_id: str) -> dict[str, Any]:
    """A delete entry."""
    return {"type": f"catalog-{kind}", "id": PREFIX + external_id}


async def submit(
    http: aiohttp.ClientSession, base: str, kind: str, action: str, *entries: dict[str, Any]
) -> tuple[int, Any, Any]:
    """POST one catalog bulk job; (status, body, headers)."""
    path = f"/api/catalog-{kind}-bulk-{action}-jobs"
    return await post(http, base + path, job_body(kind, action, *entries))


async def job_status(
    http: aiohttp.ClientSession, base: str, kind: str, action: str, job_id: str
) -> dict[str, Any]:
    """GET one catalog job's `data`."""
    path = f"{base}/api/catalog-{kind}-bulk-{action}-jobs/{job_id}"
    async with http.get(path, headers=HEADERS) as resp:
        assert resp.status == 200, await resp.text()
        return dict((await resp.json(content_type=None))["data"])


async def catalog(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """GET /sandbox/catalog."""
    return dict(await inspect(http, base, "catalog"))


def by_id(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sandbox catalog resources keyed by their external id."""
    return {r["id"].removeprefix(PREFIX): r for r in resources}
