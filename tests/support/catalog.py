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


def publish_catalog(bootstrap: str, topic: str, lines: list[dict[str, Any]]) -> None:
    """Publish catalog lines (as `produce --input` would) and wait for the broker's ack."""
    from stream.ops.produce import Publisher
    from stream.ops.produce_catalog import CatalogEncoder

    encoder = CatalogEncoder()
    with Publisher({"bootstrap.servers": bootstrap}, topic) as publisher:
        for line in lines:
            key, value = encoder.encode(line)
            publisher.send(value, key)


def latest(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """`kind:id` → the last line of each resource (None once deleted): what the catalog must
    end as."""
    out: dict[str, dict[str, Any] | None] = {}
    for line in lines:
        key = f"{line['type'].removeprefix('catalog_')}:{line['id']}"
        out[key] = None if line.get("deleted") else line
    return out


def mismatches(snapshot: dict[str, Any], expected: dict[str, dict[str, Any] | None]) -> list[str]:
    """How the sandbox's catalog differs from the topic's latest values (empty: equal)."""
    held = {
        f"{kind}:{r['id'].removeprefix(PREFIX)}": r
        for kind, plural in (("item", "items"), ("variant", "variants"),
                             ("category", "categories"))  # fmt: skip
        for r in snapshot[plural]
    }
    problems = []
    for key, line in expected.items():
        found = held.get(key)
        if line is None:
            if found is not None:
                problems.append(f"{key} should be deleted")
            continue
        if found is None:
            problems.append(f"{key} missing")
            continue
        for name, value in line.items():
            if name in ("type", "id"):
                continue
            got = found.get("item" if name == "item_id" else name)
            if name == "item_id":
                value = PREFIX + value
            if name == "categories":
                value = [PREFIX + c for c in value]
            if got != value:
                problems.append(f"{key}.{name}: {got!r} != {value!r}")
    extra = set(held) - set(expected)
    problems += [f"{key} not in the topic" for key in sorted(extra)]
    return problems


async def jobs(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    """GET /sandbox/catalog/jobs."""
    return list((await inspect(http, base, "catalog/jobs"))["jobs"])
