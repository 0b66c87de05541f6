"""Back-in-stock requests read from a track call: the per-call option or the configured event,
and what makes one impossible to send (a dead letter saying why)."""

from __future__ import annotations

from typing import Any

import pytest

from stream.catalog.stock import requested, subscription
from stream.core.calls import Record, normalize
from stream.core.errors import DecodeError, MappingError
from stream.core.options import BackInStock

EVENT = "Back In Stock Requested"


def track(event: str, properties: dict[str, Any], **integrations: Any) -> Any:
    return normalize("track", {"messageId": "m", "timestamp": "2026-03-01T10:00:00Z",
                               "userId": "u", "event": event, "properties": properties,
                               "integrations": integrations})  # fmt: skip


def test_the_option_or_the_event_asks_for_a_variant() -> None:
    option = {"Klaviyo": {"back_in_stock": {"variant": "MUG-L", "channels": ["email", "SMS"]}}}
    assert requested(track("Notify Me", {}, **option), EVENT) == BackInStock(
        "MUG-L", ("EMAIL", "SMS")
    )
    assert requested(track(EVENT, {"sku": "MUG-L"}), EVENT) == BackInStock("MUG-L")
    assert requested(track(EVENT, {"sku": "MUG-L"}), "") is None, "the event name turned off"
    assert requested(track("Viewed Product", {"sku": "MUG-L"}), EVENT) is None


def test_a_request_that_cannot_be_sent_says_why() -> None:
    with pytest.raises(MappingError, match="must name the catalog variant"):
        requested(track(EVENT, {"product": "Mug"}), EVENT)
    with pytest.raises(DecodeError, match="unknown channel"):
        track("x", {}, Klaviyo={"back_in_stock": {"variant": "V", "channels": ["PIGEON"]}})
    record = Record("t", 0, 0)
    with pytest.raises(MappingError, match="SMS needs the person's phone_number"):
        subscription(BackInStock("V", ("SMS",)), {"email": "a@x.io"}, "p1", record)
    with pytest.raises(MappingError, match="no email or phone number"):
        subscription(BackInStock("V"), {"external_id": "u"}, "p1", record)


def test_without_channels_the_person_is_told_where_they_can_be_reached() -> None:
    profile = {"email": "a@x.io", "phone_number": "+13239169023", "first_name": "Ada"}
    action = subscription(BackInStock("V"), profile, "p1", Record("t", 0, 0))
    assert action.channels == ("EMAIL", "SMS") and action.variant == "V"
    assert action.profile == {"email": "a@x.io", "phone_number": "+13239169023"}
