"""Per-call options: Segment's `integrations` object, read once when a call is decoded.

`{"All": false}` or `{"Klaviyo": false}` means the call is not for this destination (the route
stage filters it, reason `integrations`); `{"All": false, "Klaviyo": true}` or a `Klaviyo`
object means it is. Keys match case-insensitively; other destinations' keys are ignored.

A `Klaviyo` object carries per-call options, validated here into `KlaviyoOptions`:

    {"unset": ["plan"],                          profile properties to remove
     "append": {"skus": "A-1", "tags": ["x"]},   values to append to list properties
     "subscribe": {"email": true, "sms": true, "list_id": "Xy12Ab"},
     "unsubscribe": ["email", "sms"],
     "lists": {"add": ["Xy12Ab"], "remove": ["Qr34Cd"]},
     "suppress": true,                           true: suppress the email; false: unsuppress
     "back_in_stock": {"variant": "SKU-1", "channels": ["EMAIL", "SMS"]}}
                                                 tell this person when a catalog variant is back

A malformed object is bad input: `DecodeError` naming the key, so the record is dead-lettered
with a reason a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream.core.errors import DecodeError

DESTINATION = "klaviyo"
CHANNELS = ("email", "sms")
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Consent to give: channels, and the list to subscribe to (None: the account default)."""

    email: bool = False
    sms: bool = False
    list_id: str | None = None


@dataclass(frozen=True, slots=True)
class ListChanges:
    """List memberships to add and remove (list ids; membership is not consent)."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackInStock:
    """A back-in-stock request: the catalog variant's id, and the channels to be told on
    (empty: those the person can be reached on)."""

    variant: str
    channels: tuple[str, ...] = ()


STOCK_CHANNELS = ("EMAIL", "SMS", "WHATSAPP")


@dataclass(frozen=True, slots=True)
class KlaviyoOptions:
    """The per-call options of one call (`integrations.Klaviyo` as an object)."""

    unset: tuple[str, ...] = ()
    append: dict[str, Scalar | list[Scalar]] = field(default_factory=dict)
    subscribe: Subscribe | None = None
    unsubscribe: tuple[str, ...] = ()
    lists: ListChanges = ListChanges()
    suppress: bool | None = None
    back_in_stock: BackInStock | None = None

    @property
    def patches_profile(self) -> bool:
        """True when the profile upsert needs `meta.patch_properties`."""
        return bool(self.unset or self.append)


NO_OPTIONS = KlaviyoOptions()
_KEYS = ("unset", "append", "subscribe", "unsubscribe", "lists", "suppress", "back_in_stock")


def _fail(key: str, message: str) -> DecodeError:
    return DecodeError(f"integrations.Klaviyo.{key}: {message}")


def _names(value: Any, key: str, what: str) -> tuple[str, ...]:
    """A string or a list of non-empty strings, without repeats."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise _fail(key, f"must be a list of {what}")
    return tuple(dict.fromkeys(items))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _append(value: Any) -> dict[str, Scalar | list[Scalar]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise _fail("append", "must be an object of property name → value(s)")
    for name, item in value.items():
        ok = _is_scalar(item) or (
            isinstance(item, list) and bool(item) and all(_is_scalar(v) for v in item)
        )
        if not ok:
            raise _fail(f"append.{name}", "must be a string, number or boolean, or a list of them")
    return dict(value)


def _subscribe(value: Any) -> Subscribe:
    if not isinstance(value, dict):
        raise _fail("subscribe", 'must be an object like {"email": true, "list_id": "…"}')
    extra = sorted(set(value) - {*CHANNELS, "list_id"})
    if extra:
        raise _fail("subscribe", f"unknown key(s) {extra}; use email, sms, list_id")
    for channel in CHANNELS:
        if not isinstance(value.get(channel, False), bool):
            raise _fail(f"subscribe.{channel}", "must be true or false")
    list_id = value.get("list_id")
    if list_id is not None and (not isinstance(list_id, str) or not list_id):
        raise _fail("subscribe.list_id", "must be a non-empty string")
    subscribe = Subscribe(value.get("email", False), value.get("sms", False), list_id)
    if not (subscribe.email or subscribe.sms):
        raise _fail("subscribe", "names no channel (email or sms: true)")
    return subscribe


def _lists(value: Any) -> ListChanges:
    if not isinstance(value, dict):
        raise _fail("lists", 'must be an object like {"add": ["…"], "remove": ["…"]}')
    extra = sorted(set(value) - {"add", "remove"})
    if extra:
        raise _fail("lists", f"unknown key(s) {extra}; use add, remove")
    add = _names(value.get("add", []), "lists.add", "list ids")
    remove = _names(value.get("remove", []), "lists.remove", "list ids")
    both = sorted(set(add) & set(remove))
    if both:
        raise _fail("lists", f"list(s) {both} both added and removed")
    return ListChanges(add, remove)


def back_in_stock(value: Any, key: str = "back_in_stock") -> BackInStock:
    """`{"variant": "SKU-1", "channels": ["EMAIL"]}` (channels optional) → `BackInStock`."""
    if not isinstance(value, dict):
        raise _fail(key, 'must be an object like {"variant": "SKU-1", "channels": ["EMAIL"]}')
    extra = sorted(set(value) - {"variant", "channels"})
    if extra:
        raise _fail(key, f"unknown key(s) {extra}; use variant, channels")
    variant = value.get("variant")
    if not isinstance(variant, str) or not variant.strip():
        raise _fail(f"{key}.variant", "must name the catalog variant's id")
    channels = tuple(c.upper() for c in _names(value.get("channels", []), f"{key}.channels",
                                                "channels"))  # fmt: skip
    unknown = sorted(set(channels) - set(STOCK_CHANNELS))
    if unknown:
        raise _fail(f"{key}.channels", f"unknown channel(s) {unknown}; use EMAIL, SMS, WHATSAPP")
    return BackInStock(variant, channels)


def parse_options(raw: dict[str, Any]) -> KlaviyoOptions:
    """Validate the `Klaviyo` object of `integrations`; `DecodeError` naming the bad key."""
    extra = sorted(set(raw) - set(_KEYS))
    if extra:
        raise DecodeError(
            f"integrations.Klaviyo: unknown option(s) {extra}; use {', '.join(_KEYS)}"
        )
    unset = _names(raw.get("unset", []), "unset", "property names")
    append = _append(raw.get("append", {}))
    both = sorted(set(unset) & set(append))
    if both:
        raise _fail("unset", f"propert(ies) {both} both unset and appended")
    subscribe = _subscribe(raw["subscribe"]) if raw.get("subscribe") is not None else None
    unsubscribe = _names(raw.get("unsubscribe", []), "unsubscribe", "channels")
    unknown = sorted(set(unsubscribe) - set(CHANNELS))
    if unknown:
        raise _fail("unsubscribe", f"unknown channel(s) {unknown}; use email, sms")
    if subscribe is not None:
        clash = [c for c in unsubscribe if getattr(subscribe, c)]
        if clash:
            raise _fail("unsubscribe", f"{clash} also subscribed in the same call")
    lists = _lists(raw["lists"]) if raw.get("lists") is not None else ListChanges()
    suppress = raw.get("suppress")
    if suppress is not None and not isinstance(suppress, bool):
        raise _fail("suppress", "must be true or false")
    stock = raw.get("back_in_stock")
    return KlaviyoOptions(
        unset, append, subscribe, unsubscribe, lists, suppress,
        back_in_stock(stock) if stock is not None else None,
    )  # fmt: skip


def read_integrations(integrations: dict[str, Any]) -> tuple[bool, KlaviyoOptions]:
    """(is the call for Klaviyo, its per-call options) from Segment's `integrations` object:
    the `Klaviyo` key decides when present, else `All` (default true)."""
    everyone: Any = True
    mine: Any = None
    for key, value in integrations.items():
        lowered = key.lower()
        if lowered == "all":
            everyone = value
        elif lowered == DESTINATION:
            mine = value
    if not isinstance(everyone, bool):
        raise DecodeError("integrations.All: must be true or false")
    if mine is None:
        return everyone, NO_OPTIONS
    if isinstance(mine, bool):
        return mine, NO_OPTIONS
    if isinstance(mine, dict):
        return True, parse_options(mine) if mine else NO_OPTIONS
    raise DecodeError("integrations.Klaviyo: must be true, false or an object of options")
