"""Identifiers of a person, normalized so that one person always looks the same.

email: trimmed, lower-cased, syntax-checked. phone: E.164 through `phonenumbers` (Google's
libphonenumber), national numbers read with the configured default region. external_id: the
call's userId, else traits.id. anonymous_id: the call's anonymousId.

A bad field costs that field: `identifiers_of` drops an invalid email, phone or external_id and
says which (the caller counts and logs it, never its value); the rest of the call goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import phonenumbers

from stream.core.calls import Call
from stream.core.errors import InvalidIdentifier

_WHITESPACE = re.compile(r"\s")
MAX_EMAIL = 254  # RFC 5321's longest address; longer input is refused before any other check
MAX_PHONE_INPUT = 64  # characters of raw phone input; libphonenumber's own limit is 250
MAX_EXTERNAL_ID = 255



class Identifiers(NamedTuple):
    """Every identifier we know for one person; None where unknown (a tuple: built per call)."""

    email: str | None = None
    phone_number: str | None = None
    external_id: str | None = None
    anonymous_id: str | None = None

    @property
    def named(self) -> bool:
        """True when Klaviyo can identify the person without an anonymous id."""
        return bool(self.email or self.phone_number or self.external_id)

    def as_attributes(self, *, anonymous: bool) -> dict[str, str]:
        """Profile attributes with only the known identifiers (absent keys, never None)."""
        out: dict[str, str] = {}
        if self.email:
            out["email"] = self.email
        if self.phone_number:
            out["phone_number"] = self.phone_number
        if self.external_id:
            out["external_id"] = self.external_id
        if anonymous and self.anonymous_id:
            out["anonymous_id"] = self.anonymous_id
        return out


def normalize_email(raw: Any) -> str | None:
    """`"  Ann@Example.COM "` → `"ann@example.com"`; raises for something that is not an email.

    Linear in the input (no backtracking pattern), and the cache only ever holds short input."""
    if raw is None or raw == "":
        return None
    text = str(raw)
    if len(text) > MAX_EMAIL + 64:  # room for surrounding whitespace, never a 64 KB key
        raise InvalidIdentifier(
            f"invalid email address: longer than {MAX_EMAIL} characters", "email", "too_long"
        )
    return _email(text)


@lru_cache(maxsize=65_536)
def _email(raw: str) -> str:
    email = raw.strip().lower()
    if len(email) > MAX_EMAIL:
        raise InvalidIdentifier(
            f"invalid email address: longer than {MAX_EMAIL} characters", "email", "too_long"
        )
    local, at, domain = email.rpartition("@")
    ok = (
        at == "@"
        and local
        and "@" not in local
        and "." in domain[1:-1]
        and _WHITESPACE.search(email) is None
    )
    if not ok:
        raise InvalidIdentifier("invalid email address (not name@domain.tld)", "email")
    return email


def normalize_phone(raw: Any, region: str) -> str | None:
    """`"(415) 555-0100"` with region US → `"+14155550100"`; raises for an impossible number."""
    if raw is None or raw == "":
        return None
    text = str(raw)
    if len(text) > MAX_PHONE_INPUT:
        raise InvalidIdentifier(
            f"invalid phone number: longer than {MAX_PHONE_INPUT} characters", "phone", "too_long"
        )
    return _phone(text, region)


@lru_cache(maxsize=65_536)
def _phone(raw: str, region: str) -> str:
    text = raw.strip()
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(f"invalid phone number: {exc}", "phone") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier(
            f"invalid phone number for region {region}", "phone", "not_valid_for_region"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _external_id(call: Call) -> str | None:
    raw = call.user_id or call.traits.get("id")
    if raw is None or raw == "":
        return None
    value = str(raw)
    if len(value) > MAX_EXTERNAL_ID:
        raise InvalidIdentifier(
            f"external_id longer than {MAX_EXTERNAL_ID} characters", "external_id", "too_long"
        )
    return value


def identifiers_of(call: Call, region: str) -> tuple[Identifiers, tuple[InvalidIdentifier, ...]]:
    """The valid identifiers one call names (traits for identify and delete, context.traits
    for the others), and why each invalid one was left out."""
    own = call.type == "identify" or call.type == "delete"
    traits = call.traits if own else call.context.get("traits") or {}
    if not isinstance(traits, dict):
        traits = {}
    dropped: list[InvalidIdentifier] = []
    return Identifiers(
        email=_valid(normalize_email, dropped, traits.get("email")),
        phone_number=_valid(
            normalize_phone, dropped, traits.get("phone") or traits.get("phoneNumber"), region
        ),
        external_id=_valid(_external_id, dropped, call),
        anonymous_id=call.anonymous_id,
    ), tuple(dropped)


def _valid(
    normalize: Callable[..., str | None], dropped: list[InvalidIdentifier], *args: Any
) -> str | None:
    try:
        return normalize(*args)
    except InvalidIdentifier as exc:
        dropped.append(exc)
        return None
