"""Back in stock: a track call asking to be told when a catalog variant is back becomes a
back-in-stock subscription of its person, an item (an `Action`) of its record.

Asked either by the per-call option `integrations.Klaviyo.back_in_stock: {"variant": "SKU-1",
"channels": ["EMAIL", "SMS"]}`, or by a track call named `BACK_IN_STOCK_EVENT` (default `Back
In Stock Requested`) whose properties name the variant (`variant`, `variant_id` or `sku`) and,
optionally, the channels. Without channels, the person is subscribed on those they can be
reached on (EMAIL with an email, SMS with a phone number). Nothing more is needed when the
variant is back: Klaviyo's back-in-stock flow fires from the catalog update that raises its
`inventory_quantity` from 0 (the catalog stage sends it).
"""

from __future__ import annotations

from typing import Any

from stream.core.calls import Call, Record
from stream.core.errors import DecodeError, MappingError
from stream.core.options import BackInStock, back_in_stock
from stream.delivery.actions import Action

NEEDS = {"EMAIL": "email", "SMS": "phone_number", "WHATSAPP": "phone_number"}
LABEL = "back in stock"


def requested(call: Call, event_name: str) -> BackInStock | None:
    """The back-in-stock request a track call makes, if any; `MappingError` when it asks but
    names no variant (or bad channels)."""
    if call.options.back_in_stock is not None:
        return call.options.back_in_stock
    if not event_name or call.event != event_name:
        return None
    props = call.properties
    variant = props.get("variant") or props.get("variant_id") or props.get("sku")
    asked: dict[str, Any] = {"variant": variant if isinstance(variant, str) else None}
    if props.get("channels") is not None:
        asked["channels"] = props["channels"]
    try:
        return back_in_stock(asked, key=f"properties of {event_name}")
    except DecodeError as exc:
        raise MappingError(str(exc)) from None


def subscription(
    asked: BackInStock, profile: dict[str, Any], person: str, record: Record
) -> Action:
    """The subscription action of `person` (whose identifiers are `profile`)."""
    channels = asked.channels or tuple(c for c in ("EMAIL", "SMS") if profile.get(NEEDS[c]))
    if not channels:
        raise MappingError(f"{LABEL}: the person has no email or phone number we know")
    missing = [c for c in channels if not profile.get(NEEDS[c])]
    if missing:
        raise MappingError(
            f"{LABEL}: {', '.join(missing)} needs the person's {NEEDS[missing[0]]}, unknown"
        )
    who = {k: profile[k] for k in ("email", "phone_number", "external_id") if profile.get(k)}
    label = f"{LABEL} {asked.variant}"
    return Action("back_in_stock", who, None, [record], person=person, label=label,
                  channels=channels, variant=asked.variant)  # fmt: skip
