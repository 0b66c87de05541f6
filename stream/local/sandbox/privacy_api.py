"""Handler of Klaviyo's data-privacy deletion request (GDPR/CCPA): one identifier, applied later."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import accepted, raise_errors
from .errors import ErrorItem, invalid
from .state import Sandbox
from .validation import valid_e164, valid_email


async def request_profile_deletion(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/data-privacy-deletion-jobs: delete the profiles one identifier names; 202.

    Exactly one of `id`, `email`, `phone_number` ("If multiple identifiers are provided, we
    will return an error"). The deletion runs `deletion_delay_seconds` later; a value no
    profile holds is accepted and deletes nothing (the answer never tells who exists).
    """
    who = body["data"]["attributes"]["profile"]["data"]
    attrs = who.get("attributes") or {}
    given = {
        name: value
        for name, value in (
            ("id", who.get("id")),
            ("email", attrs.get("email")),
            ("phone_number", attrs.get("phone_number")),
        )
        if value is not None
    }
    pointer = "/data/attributes/profile/data"
    if len(given) != 1:
        detail = "Provide exactly one of id, email or phone_number"
        raise invalid(f"{detail}; got {', '.join(given) or 'none'}.", pointer=pointer)
    [(kind, value)] = given.items()
    problems = []
    if kind == "email" and not valid_email(value):
        problems.append(
            ErrorItem(
                400,
                "invalid",
                f"Invalid email address: {value!r}.",
                pointer=f"{pointer}/attributes/email",
            )
        )
    if kind == "phone_number" and not valid_e164(value):
        detail = "Invalid phone number format (Example of a valid format: +13239169023)."
        problems.append(
            ErrorItem(400, "invalid", detail, pointer=f"{pointer}/attributes/phone_number")
        )
    raise_errors(problems)
    sandbox.queue_deletion(kind, value)
    return accepted()
