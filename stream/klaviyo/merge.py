"""Heal split profiles: when Klaviyo answers 409 duplicate_profile, merge the two profiles.

The 409 means the identifiers we sent for one person already belong to two Klaviyo profiles.
The profile Klaviyo matched first (email, then phone_number, then external_id — Klaviyo's own
order) is the destination; the `duplicate_profile_id` it names is folded into it with
`POST /api/profile-merge`, after which the same upsert succeeds. Every request goes through the
deliver stage's paced, retried `Requester`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from stream import metrics
from stream.klaviyo import mapping
from stream.klaviyo.client import PROFILE_MERGE, PROFILES, Requester

MATCH_ORDER = ("email", "phone_number", "external_id")


def filter_value(value: str) -> str:
    """`value` as a quoted string argument of Klaviyo's filter syntax (backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def equals_filter(field: str, value: str) -> str:
    """`?filter=equals(field,"value")`, URI-encoded as Klaviyo recommends."""
    return "?filter=" + quote(f"equals({field},{filter_value(value)})", safe="")


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


async def merge_duplicate(
    request: Requester, attributes: dict[str, Any], duplicate_id: str
) -> bool:
    """Fold `duplicate_id` into the profile matching `attributes`; False if there is none."""
    destination = await find_profile_id(request, attributes, duplicate_id)
    if destination is None:
        return False
    body = mapping.merge_body(destination, [duplicate_id])
    await request("POST", PROFILE_MERGE, body, budget=PROFILE_MERGE)
    metrics.PROFILE_MERGES.inc()
    return True
