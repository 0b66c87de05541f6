"""Fixtures: a real sandbox on loopback and an aiohttp client speaking to it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from stream.sandbox import SandboxConfig, SandboxServer

API_KEY = "pk_sandbox_0000000000000000000000000000"
REVISION = "2026-07-15"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {API_KEY}",
    "revision": REVISION,
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    """A sandbox with default settings on 127.0.0.1 and a free port."""
    async with SandboxServer(SandboxConfig()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session with no default headers (tests choose what they send)."""
    async with aiohttp.ClientSession() as session:
        yield session


def profile(**attributes: Any) -> dict[str, Any]:
    """An event's profile resource object."""
    return {"type": "profile", "attributes": attributes}


def event(
    metric: str = "Placed Order", who: dict[str, Any] | None = None, **attributes: Any
) -> dict[str, Any]:
    """A POST /api/events body."""
    attrs: dict[str, Any] = {
        "properties": attributes.pop("properties", {}),
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": who or profile(email="ada@example.com")},
        **attributes,
    }
    return {"data": {"type": "event", "attributes": attrs}}


def bulk_entry(who: dict[str, Any], *events: dict[str, Any]) -> dict[str, Any]:
    """One entry of events-bulk-create: a profile and its events' attributes."""
    return {
        "type": "event-bulk-create",
        "attributes": {
            "profile": {"data": who},
            "events": {"data": [{"type": "event", "attributes": e} for e in events]},
        },
    }


def bulk_event(metric: str = "Viewed Product", **attributes: Any) -> dict[str, Any]:
    """The attributes of one event inside a bulk entry."""
    return {
        "properties": attributes.pop("properties", {}),
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        **attributes,
    }


def bulk_events(*entries: dict[str, Any]) -> dict[str, Any]:
    """A POST /api/event-bulk-create-jobs body."""
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {"events-bulk-create": {"data": list(entries)}},
        }
    }


def upsert(profile_id: str | None = None, **attributes: Any) -> dict[str, Any]:
    """A POST /api/profile-import body."""
    data: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile_id is not None:
        data["id"] = profile_id
    return {"data": data}


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """POST JSON; returns (status, parsed body or None, headers)."""
    raw = orjson.dumps(body)
    data: Any = io.BytesIO(raw) if len(raw) > 500_000 else raw  # aiohttp warns on big bytes
    async with http.post(url, data=data, headers=HEADERS if headers is None else headers) as r:
        raw = await r.read()
        return r.status, (await r.json(content_type=None)) if raw else None, r.headers


async def get(
    http: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """GET with the API headers; returns (status, parsed body, headers)."""
    async with http.get(url, params=params, headers=HEADERS) as r:
        return r.status, await r.json(content_type=None), r.headers


async def inspect(http: aiohttp.ClientSession, base: str, what: str) -> Any:
    """GET /sandbox/<what>."""
    async with http.get(f"{base}/sandbox/{what}") as r:
        assert r.status == 200
        return await r.json()


async def create(http: aiohttp.ClientSession, base: str, **attributes: Any) -> str:
    """Create a profile through POST /api/profile-import; returns its id."""
    status, body, _ = await post(http, f"{base}/api/profile-import", upsert(**attributes))
    assert status == 201, body
    return str(body["data"]["id"])


def merge_body(destination: str, *sources: str) -> dict[str, Any]:
    """A POST /api/profile-merge body."""
    related = [{"type": "profile", "id": source} for source in sources]
    return {
        "data": {
            "type": "profile-merge",
            "id": destination,
            "relationships": {"profiles": {"data": related}},
        }
    }
