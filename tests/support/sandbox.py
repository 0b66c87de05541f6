"""Requests and inspection helpers for tests that speak to the sandbox over HTTP."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson


async def faults(url: str, **body: Any) -> dict[str, Any]:
    """POST /sandbox/faults (`hold=True`: Klaviyo answers nothing until `hold=False`)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/sandbox/faults", json=body) as resp,
    ):
        resp.raise_for_status()
        answer: dict[str, Any] = await resp.json()
        return answer


async def waiting_requests(url: str) -> int:
    """Requests the sandbox holds unanswered right now."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/sandbox/faults") as resp,
    ):
        resp.raise_for_status()
        return int((await resp.json())["waiting"])


API_KEY = "pk_sandbox_0000000000000000000000000000"
REVISION = "2026-07-15"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {API_KEY}",
    "revision": REVISION,
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


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


def consenting(
    email: str | None = None,
    phone_number: str | None = None,
    channels: tuple[str, ...] = ("email",),
    consented_at: str | None = None,
    profile_id: str | None = None,
) -> dict[str, Any]:
    """One profile of a subscribe request, consenting to marketing on `channels`."""
    attributes: dict[str, Any] = {"subscriptions": {}}
    for channel in channels:
        record: dict[str, Any] = {"consent": "SUBSCRIBED"}
        if consented_at is not None:
            record["consented_at"] = consented_at
        attributes["subscriptions"][channel] = {"marketing": record}
    if email is not None:
        attributes["email"] = email
    if phone_number is not None:
        attributes["phone_number"] = phone_number
    entry: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile_id is not None:
        entry["id"] = profile_id
    return entry


def withdrawing(
    email: str | None = None,
    phone_number: str | None = None,
    channels: tuple[str, ...] = ("email",),
) -> dict[str, Any]:
    """One profile of an unsubscribe request."""
    attributes: dict[str, Any] = {
        "subscriptions": {c: {"marketing": {"consent": "UNSUBSCRIBED"}} for c in channels}
    }
    if email is not None:
        attributes["email"] = email
    if phone_number is not None:
        attributes["phone_number"] = phone_number
    return {"type": "profile", "attributes": attributes}


def consent_job(
    kind: str, *profiles: dict[str, Any], list_id: str | None = None, **attributes: Any
) -> dict[str, Any]:
    """A subscribe ("create") or unsubscribe ("delete") bulk job body."""
    data: dict[str, Any] = {
        "type": f"profile-subscription-bulk-{kind}-job",
        "attributes": {"profiles": {"data": list(profiles)}, **attributes},
    }
    if list_id is not None:
        data["relationships"] = {"list": {"data": {"type": "list", "id": list_id}}}
    return {"data": data}


def suppression_job(
    kind: str, *emails: str, list_id: str | None = None, segment_id: str | None = None
) -> dict[str, Any]:
    """A suppress ("create") or unsuppress ("delete") bulk job body."""
    data: dict[str, Any] = {"type": f"profile-suppression-bulk-{kind}-job", "attributes": {}}
    if emails:
        entries = [{"type": "profile", "attributes": {"email": e}} for e in emails]
        data["attributes"]["profiles"] = {"data": entries}
    relationships: dict[str, Any] = {}
    if list_id is not None:
        relationships["list"] = {"data": {"type": "list", "id": list_id}}
    if segment_id is not None:
        relationships["segment"] = {"data": {"type": "segment", "id": segment_id}}
    if relationships:
        data["relationships"] = relationships
    return {"data": data}


async def profile_of(http: aiohttp.ClientSession, base: str, **identifier: str) -> dict[str, Any]:
    """The /sandbox/profiles snapshot of the one profile holding `identifier` (or `id`)."""
    [(name, value)] = identifier.items()
    profiles = (await inspect(http, base, "profiles"))["profiles"]
    if name == "id":
        found = [p for p in profiles if p["id"] == value]
    else:
        found = [p for p in profiles if p["attributes"].get(name) == value]
    assert len(found) == 1, (identifier, found)
    return dict(found[0])
