"""Which Klaviyo endpoint (rate-limit budget) a batch's requests go to: one decision, made here.

The send stage reserves the governor's slot of a batch's first request (`first_endpoint`) before
the batch leaves; the deliver stage sends each request where `endpoint_for` says. Both ask the
same functions, so the slot reserved is the slot the first request spends.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream.delivery.batch import Kind, Sendable
from stream.klaviyo.client import (
    CLIENT_EVENTS,
    CLIENT_EVENTS_BULK,
    CLIENT_PROFILES,
    EVENTS,
    EVENTS_BULK,
    PROFILE_IMPORT,
    PROFILES_BULK,
)
from stream.klaviyo.consent import ENDPOINTS as ACTION_ENDPOINTS
from stream.klaviyo.consent import endpoint_of

SMALL_PROFILE_BATCH = 3  # up to this many profiles go one by one to /api/profile-import


def endpoint_for(kind: Kind, size: int, client_mode: bool = False) -> str:
    """The endpoint `size` items of `kind` go to together: one bulk request, or one request
    each (up to SMALL_PROFILE_BATCH profiles; profiles in client mode; a single event)."""
    if kind in ACTION_ENDPOINTS:  # consent, lists, deletion: one budget per kind
        return endpoint_of(kind, client_mode)
    if client_mode:
        if kind == "profiles":
            return CLIENT_PROFILES
        return CLIENT_EVENTS if size <= 1 else CLIENT_EVENTS_BULK
    if kind == "events":
        return EVENTS if size <= 1 else EVENTS_BULK
    return PROFILE_IMPORT if size <= SMALL_PROFILE_BATCH else PROFILES_BULK


def first_endpoint(kind: Kind, items: Sequence[Sendable], client_mode: bool = False) -> str:
    """The endpoint of the first request of a batch of `items`: in client mode events go one
    request per profile (its group), so the first group's size decides."""
    size = len(items)
    if client_mode and kind == "events" and items:
        first = items[0].group_key
        size = sum(1 for item in items if item.group_key == first)
    return endpoint_for(kind, size, client_mode)
