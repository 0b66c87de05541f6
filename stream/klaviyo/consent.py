"""Klaviyo's consent, list and deletion requests: endpoints (rate-limit budgets) and bodies.

- subscribe `POST /api/profile-subscription-bulk-create-jobs` (≤ 1,000 profiles): per profile
  its email and/or E.164 phone and the channels' marketing consent; the list and
  `custom_source` once per request. A live subscription sends neither `historical_import` nor
  `consented_at` (Klaviyo refuses `consented_at` without it, and a historical import skips
  double opt-in): only backfill sends `historical_import: true` with each `consented_at`;
- unsubscribe `POST /api/profile-subscription-bulk-delete-jobs` (≤ 100), never with a list:
  Klaviyo unsubscribes a profile that is not on the given list globally, so a list is only ever
  left through the list endpoint;
- suppress / unsuppress `POST /api/profile-suppression-bulk-create-jobs` / `-delete-jobs`
  (≤ 100 emails);
- lists `POST` / `DELETE /api/lists/{id}/relationships/profiles` (≤ 1,000 profile ids);
- deletion `POST /api/data-privacy-deletion-jobs`: one identifier (email, phone_number or
  profile id) per request; its confirmation looks the person's identifiers up
  (`GET /api/profiles?filter=any(email,[…])`, up to 100 a request) and deletes again by id
  whatever reappeared;
- client mode `POST /client/subscriptions`: one profile, to a list;
- back in stock `POST /api/back-in-stock-subscriptions` (`/client/…` in client mode): one
  profile and one catalog variant a request (its body: `stream.klaviyo.catalog`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from stream.klaviyo.catalog import BACK_IN_STOCK, CLIENT_BACK_IN_STOCK
from stream.klaviyo.client import PROFILES

SUBSCRIBE = "/api/profile-subscription-bulk-create-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
SUPPRESS = "/api/profile-suppression-bulk-create-jobs"
UNSUPPRESS = "/api/profile-suppression-bulk-delete-jobs"
LIST_ADD = "/api/lists/{id}/relationships/profiles"  # POST; budgets are named by path pattern
LIST_REMOVE = "DELETE /api/lists/{id}/relationships/profiles"  # its own budget: the DELETE
DELETION = "/api/data-privacy-deletion-jobs"
CLIENT_SUBSCRIPTIONS = "/client/subscriptions"

# action kind → (budget, most entries per request)
ENDPOINTS: dict[str, tuple[str, int]] = {
    "subscribe": (SUBSCRIBE, 1000),
    "unsubscribe": (UNSUBSCRIBE, 100),
    "suppress": (SUPPRESS, 100),
    "unsuppress": (UNSUPPRESS, 100),
    "list_add": (LIST_ADD, 1000),
    "list_remove": (LIST_REMOVE, 1000),
    "deletion": (DELETION, 1),
    "confirm": (PROFILES, 100),  # lookups by any(email, […]); what reappeared, deleted again
    "back_in_stock": (BACK_IN_STOCK, 1),
}
CHANNEL_IDENTIFIER = {"email": "email", "sms": "phone_number"}  # what each channel needs


def endpoint_of(kind: str, client_mode: bool = False) -> str:
    """The budget a request of action `kind` counts against."""
    if client_mode and kind == "subscribe":
        return CLIENT_SUBSCRIPTIONS
    if client_mode and kind == "back_in_stock":
        return CLIENT_BACK_IN_STOCK
    return ENDPOINTS[kind][0]


def most_per_request(kind: str, client_mode: bool = False) -> int:
    """Entries one request of action `kind` may carry."""
    return 1 if client_mode and kind == "subscribe" else ENDPOINTS[kind][1]


def list_path(list_id: str) -> str:
    """`/api/lists/{id}/relationships/profiles` for one list."""
    return f"/api/lists/{quote(list_id, safe='')}/relationships/profiles"


def subscriptions(
    channels: tuple[str, ...], consent: str, consented_at: str | None = None
) -> dict[str, Any]:
    """`{"email": {"marketing": {"consent": "SUBSCRIBED"}}, …}` for each channel."""
    record: dict[str, Any] = {"consent": consent}
    if consented_at is not None:
        record["consented_at"] = consented_at
    return {channel: {"marketing": dict(record)} for channel in channels}


def consent_entry(
    identifiers: dict[str, Any],
    channels: tuple[str, ...],
    consent: str,
    consented_at: str | None = None,
) -> dict[str, Any]:
    """One profile of a subscribe or unsubscribe request: its email and phone (those known,
    the strongest first) and the channels' consent."""
    attributes: dict[str, Any] = {
        key: identifiers[key] for key in ("email", "phone_number") if identifiers.get(key)
    }
    attributes["subscriptions"] = subscriptions(channels, consent, consented_at)
    return {"type": "profile", "attributes": attributes}


def _list(list_id: str | None) -> dict[str, Any]:
    return {"list": {"data": {"type": "list", "id": list_id}}} if list_id else {}


def subscribe_body(
    entries: list[dict[str, Any]], list_id: str | None, historical: bool, custom_source: str
) -> dict[str, Any]:
    """Body of a bulk subscribe; `historical_import` only when true (backfill)."""
    attributes: dict[str, Any] = {"custom_source": custom_source, "profiles": {"data": entries}}
    if historical:
        attributes["historical_import"] = True
    data: dict[str, Any] = {"type": "profile-subscription-bulk-create-job",
                            "attributes": attributes}  # fmt: skip
    if list_id:
        data["relationships"] = _list(list_id)
    return {"data": data}


def unsubscribe_body(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Body of a bulk unsubscribe: global, never with a list (see the module's docstring)."""
    return {
        "data": {
            "type": "profile-subscription-bulk-delete-job",
            "attributes": {"profiles": {"data": entries}},
        }
    }


def suppression_body(emails: list[str], lift: bool) -> dict[str, Any]:
    """Body of a bulk suppress (or, `lift`, unsuppress) of these emails."""
    entries = [{"type": "profile", "attributes": {"email": email}} for email in emails]
    kind = "delete" if lift else "create"
    return {
        "data": {
            "type": f"profile-suppression-bulk-{kind}-job",
            "attributes": {"profiles": {"data": entries}},
        }
    }


def list_body(profile_ids: list[str]) -> dict[str, Any]:
    """Body of a list membership change: the profiles' ids."""
    return {"data": [{"type": "profile", "id": profile_id} for profile_id in profile_ids]}


def deletion_body(attribute: str, value: str) -> dict[str, Any]:
    """Body of a data-privacy deletion by one identifier: `id`, `email` or `phone_number`
    (`attributes` is required even by id: then it is empty)."""
    who: dict[str, Any] = {"type": "profile", "attributes": {}}
    if attribute == "id":
        who["id"] = value
    else:
        who["attributes"] = {attribute: value}
    return {
        "data": {
            "type": "data-privacy-deletion-job",
            "attributes": {"profile": {"data": who}},
        }
    }


def client_subscription_body(
    identifiers: dict[str, Any], channels: tuple[str, ...], list_id: str, custom_source: str
) -> dict[str, Any]:
    """Body of `POST /client/subscriptions`: one profile's consent, to a list."""
    return {
        "data": {
            "type": "subscription",
            "attributes": {
                "custom_source": custom_source,
                "profile": {"data": consent_entry(identifiers, channels, "SUBSCRIBED")},
            },
            "relationships": _list(list_id),
        }
    }
