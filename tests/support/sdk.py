"""Calls as the real client libraries write them, captured without a network.

Both SDKs take `send=False`: `_enqueue` then returns `(True, message)` — the exact dict it
would have queued for upload (ids stringified, timestamp as ISO-8601, `context.library` set,
`None` fields kept) — and never starts its upload thread. Each library gets the same calls, so
a test can compare what each one writes: segment-analytics-python 2.4.0 puts identify traits
at the top level; rudder-sdk-python 2.1.9 only in `context.traits` (and adds `channel` and a
default `integrations: {"All": true}`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

WHEN = datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)
ADDRESS = {"street": "221B Baker St", "city": "London", "state": "Greater London",
           "postalCode": "NW1 6XE", "country": "United Kingdom"}  # fmt: skip
BOOK = {"product_id": "507f1f77", "sku": "G-32", "category": "Books", "name": "Winnie the Pooh",
        "brand": "Kids Books", "price": 9.99, "quantity": 3,
        "url": "https://shop.example.com/p/winnie",
        "image_url": "https://shop.example.com/p/winnie.png"}  # fmt: skip
GAME = {"product_id": "505bd76", "sku": "G-1", "category": "Games", "name": "Monopoly",
        "brand": "Hasbro", "price": 19.0, "quantity": 1}  # fmt: skip
ORDER = {"order_id": "50314b8e", "total": 48.97, "revenue": 44.0, "shipping": 3, "tax": 1.97,
         "discount": 2.5, "coupon": "hasbros", "currency": "USD"}  # fmt: skip
LIBRARIES = ("segment", "rudder")
Message = dict[str, Any]


def _client(library: str) -> Any:
    if library == "segment":
        return SegmentClient(write_key="test-write-key", send=False)
    return RudderClient(write_key="test-write-key", send=False)


def user_of(library: str) -> str:
    """The person each library's calls are about (one per library: their profiles differ)."""
    return f"{library}-user-1"


def email_of(library: str) -> str:
    return f"{library}.user@example.com"


def phone_of(library: str) -> tuple[str, str]:
    """(as written, E.164): each person has their own number."""
    last = "0100" if library == "segment" else "0123"
    return f"(415) 555-{last}", f"+1415555{last}"


def calls(library: str) -> dict[str, Message]:
    """Every kind of call, written by `library`, by name."""
    client = _client(library)
    user = user_of(library)

    def capture(method: Callable[..., tuple[bool, Message]], key: str, **kwargs: Any) -> Message:
        ok, message = method(message_id=f"{library}-{key}", timestamp=WHEN, **kwargs)
        assert ok
        return message

    return {
        "identify": capture(
            client.identify, "identify", user_id=user,
            traits={"email": f"  {email_of(library).upper()} ", "firstName": "Ada",
                    "lastName": "Lovelace", "phone": phone_of(library)[0], "title": "Engineer",
                    "address": dict(ADDRESS), "plan": "pro", "logins": 7,
                    "company": {"name": "Initech", "id": "c-42", "industry": "Software"}},
            context={"ip": "203.0.113.7", "timezone": "Europe/London",
                     "location": {"latitude": 51.5238, "longitude": -0.1586}},
        ),
        "identify_patch": capture(
            client.identify, "identify-patch", user_id=user,
            traits={"trial": "ended"},
            integrations={"Klaviyo": {"unset": ["trial"], "append": {"skus": ["G-32"]}}},
        ),
        "order": capture(
            client.track, "order", user_id=user, event="Order Completed",
            properties={**ORDER, "products": [dict(BOOK), dict(GAME)]},
        ),
        "viewed": capture(
            client.track, "viewed", user_id=user, event="Product Viewed", properties=dict(BOOK)
        ),
        "signup": capture(
            client.track, "signup", user_id=user, event="Signed Up",
            properties={"plan": "pro", "total": 12, "currency": "EUR"},
        ),
        "hidden": capture(
            client.track, "hidden", user_id=user, event="Internal Audit",
            properties={"step": 1}, integrations={"All": True, "Klaviyo": False},
        ),
        "page": capture(
            client.page, "page", user_id=user, name="Pricing",
            properties={"path": "/pricing", "url": "https://shop.example.com/pricing"},
        ),
        "screen": capture(
            client.screen, "screen", user_id=user, name="Home", properties={"tab": "feed"}
        ),
        "group": capture(
            client.group, "group", user_id=user, group_id="acme-1",
            traits={"name": "Acme", "employees": 50},
        ),
        "alias": capture(client.alias, "alias", previous_id=f"{library}-anon-1", user_id=user),
    }  # fmt: skip
