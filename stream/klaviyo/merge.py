"""Heal split profiles: when Klaviyo answers 409 duplicate_profile, merge the two profiles.

The 409 means the identifiers we sent for one person already belong to two Klaviyo profiles.
The profile Klaviyo matched first (email, then phone_number, then external_id — Klaviyo's own
order) is the destination; the `duplicate_profile_id` it names is folded into it with
`POST /api/profile-merge` (one source per request, as Klaviyo accepts). Klaviyo merges
asynchronously ("queues an asynchronous task"): the merge has landed when the source profile is
gone, so `wait_merged` polls for that, with backoff and a bound, before the upsert is sent
again. Every request goes through the deliver stage's paced, retried `Requester`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from stream.core.errors import KlaviyoClientError
from stream.core.retry import DEFAULT, RetryPolicy
from stream.klaviyo import mapping
from stream.klaviyo.client import PROFILE_MERGE, PROFILES, Requester
from stream.telemetry import metrics

MATCH_ORDER = ("email", "phone_number", "external_id")
MERGE_WAIT_SECONDS = 60.0  # how long a queued merge may take to land before we give up waiting


def filter_value(value: str) -> str:
    """`value` as a quoted string argument of Klaviyo's filter syntax (backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def equals_filter(field: str, value: str) -> str:
    """`?filter=equals(field,"value")`, URI-encoded as Klaviyo recommends."""
    return "?filter=" + quote(f"equals({field},{filter_value(value)})", safe="")


def any_filter(field: str, values: list[str]) -> str:
    """`?filter=any(field,["a","b"])`, URI-encoded."""
    listed = ",".join(filter_value(v) for v in values)
    return "?filter=" + quote(f"any({field},[{listed}])", safe="")


async def find_profile_id(
    request: Requester, attributes: dict[str, Any], not_id: str
) -> str | None:
    """The profile owning the strongest identifier in `attributes`, other than `not_id`."""
    for key in MATCH_ORDER:
        value = attributes.get(key)
        if not value:
            continue
        response = await request("GET", PROFILES + equals_filter(key, value), budget=PROFILES)
        data = response.body.get("data") if isinstance(response.body, dict) else None
        for profile in data or []:
            if profile.get("id") and profile["id"] != not_id:
                return str(profile["id"])
    return None


async def profile_identifiers(request: Requester, profile_id: str) -> dict[str, str]:
    """The email, phone_number and external_id a Klaviyo profile holds (those it has)."""
    response = await request("GET", PROFILES + equals_filter("id", profile_id), budget=PROFILES)
    data = response.body.get("data") if isinstance(response.body, dict) else None
    attributes = (data[0].get("attributes") or {}) if data else {}
    return {key: str(attributes[key]) for key in MATCH_ORDER if attributes.get(key)}


def strongest_alone(attributes: dict[str, Any]) -> dict[str, Any]:
    """A profile with only its strongest identifier (the first one in its order, as the
    identity stage builds it): sent where a merge was refused, it lands on that profile."""
    out: dict[str, Any] = {}
    kept = False
    for key, value in attributes.items():
        if key in MATCH_ORDER:
            if kept:
                continue
            kept = True
        out[key] = value
    return out


async def merge_duplicate(
    request: Requester, attributes: dict[str, Any], duplicate_id: str
) -> bool:
    """Queue folding `duplicate_id` into the profile matching `attributes`; False if there is
    none. A 404 for the source means it was merged already (by another consumer): True."""
    destination = await find_profile_id(request, attributes, duplicate_id)
    if destination is None:
        return False
    body = mapping.merge_body(destination, [duplicate_id])
    try:
        await request("POST", PROFILE_MERGE, body, budget=PROFILE_MERGE)
    except KlaviyoClientError as exc:
        if exc.status != 404:
            raise
        return True
    metrics.PROFILE_MERGES.inc()
    return True


async def wait_merged(
    request: Requester,
    source_id: str,
    max_seconds: float = MERGE_WAIT_SECONDS,
    policy: RetryPolicy = DEFAULT,
) -> bool:
    """Poll until the merged-away profile `source_id` is gone (the merge landed); False when it
    is still there after `max_seconds`."""
    deadline = time.monotonic() + max_seconds
    path = PROFILES + equals_filter("id", source_id)
    attempt = 0
    while True:
        response = await request("GET", path, budget=PROFILES)
        data = response.body.get("data") if isinstance(response.body, dict) else None
        if not data:
            return True
        delay = policy.delay(attempt)
        attempt += 1
        if time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
