"""Heal split profiles: when Klaviyo answers 409 duplicate_profile, merge the two profiles.

The 409 means the identifiers we sent for one person already belong to two Klaviyo profiles.
The profile Klaviyo matched first (email, then phone_number, then external_id — Klaviyo's own
order) is the destination; the `duplicate_profile_id` it names is folded into it with
`POST /api/profile-merge`, after which the same upsert succeeds.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from stream import metrics
from stream.klaviyo import mapping
from stream.klaviyo.client import PROFILE_MERGE, KlaviyoClient

PROFILES = "/api/profiles"
MATCH_ORDER = ("email", "phone_number", "external_id")


async def find_profile_id(
    client: KlaviyoClient, attributes: dict[str, Any], not_id: str
) -> str | None:
    """The profile owning the strongest identifier in `attributes`, other than `not_id`."""
    for key in MATCH_ORDER:
        value = attributes.get(key)
        if not value:
            continue
        expression = f'equals({key},"{value}")'
        response = await client.get(f"{PROFILES}?filter={quote(expression)}")
        data = response.body.get("data") if isinstance(response.body, dict) else None
        for profile in data or []:
            if profile.get("id") and profile["id"] != not_id:
                return str(profile["id"])
    return None


async def merge_duplicate(
    client: KlaviyoClient, attributes: dict[str, Any], duplicate_id: str
) -> bool:
    """Fold `duplicate_id` into the profile matching `attributes`; False if there is none."""
    destination = await find_profile_id(client, attributes, duplicate_id)
    if destination is None:
        return False
    await client.post(PROFILE_MERGE, mapping.merge_body(destination, [duplicate_id]))
    metrics.PROFILE_MERGES.inc()
    return True
