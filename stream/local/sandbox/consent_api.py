"""Handlers of Klaviyo's consent endpoints: subscribe, unsubscribe, suppress, unsuppress, and
the client-side subscription.

Each validates the whole request first (one 400 listing every bad profile, pointers to the
field), then accepts it as a job (`Sandbox.accept`, applied now or `job_delay_seconds`
later): a bad request changes nothing. What a job does when it runs is in `consent_jobs`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from aiohttp import web

from .api import (
    accepted,
    base_url,
    bulk_errors,
    json_response,
    not_found,
    raise_errors,
    with_long_strings,
)
from .consent import PHONE_CHANNELS, MailingList, channel_of
from .consent_jobs import (
    check_client_subscription,
    run_client_subscription,
    run_subscribe,
    run_suppression,
    run_unsubscribe,
    topics_of,
)
from .errors import ApiError, ErrorItem, invalid, pointer_of
from .profiles import Profile, ProfileNotFound
from .stamps import iso
from .state import Sandbox
from .subscriptions import new_job
from .validation import Path, parse_time, valid_e164, valid_email

MAX_SUBSCRIBE = 1_000
MAX_UNSUBSCRIBE = 100
MAX_SUPPRESS = 100
ROOT: Path = ("data", "attributes", "profiles", "data")
_PHONE_FORMAT = "Invalid phone number format (Example of a valid format: +13239169023)."


def related_list(sandbox: Sandbox, data: dict[str, Any], status: int = 404) -> MailingList | None:
    """The list of `relationships.list`, None when absent; an unknown id is an error."""
    related = ((data.get("relationships") or {}).get("list") or {}).get("data")
    if not related:
        return None
    found = sandbox.store.lists.get(related["id"])
    if found is None:
        detail = f"List {related['id']} does not exist."
        code = "not_found" if status == 404 else "invalid"
        item = ErrorItem(status, code, detail, pointer="/data/relationships/list/data/id")
        raise ApiError(status, [item])
    return found


def _check_identity(
    attrs: dict[str, Any], apath: Path, topics: dict[str, Any], known: Profile | None
) -> ErrorItem | None:
    """Identifier format, and the identifier each channel needs (email; E.164 phone for SMS)."""
    email, phone = attrs.get("email"), attrs.get("phone_number")
    if isinstance(email, str) and not valid_email(email):
        return _invalid((*apath, "email"), f"Invalid email address: {email!r}.")
    if isinstance(phone, str) and not valid_e164(phone):
        return _invalid((*apath, "phone_number"), _PHONE_FORMAT)
    channels = {channel_of(topic) for topic in topics}
    held = known.attributes if known is not None else {}
    if "email" in channels and not (email or held.get("email")):
        return _invalid((*apath, "email"), "An email address is required for email consent.")
    if channels & PHONE_CHANNELS and not (phone or held.get("phone_number")):
        detail = "A phone_number in E.164 format is required for SMS and WhatsApp consent."
        return _invalid((*apath, "phone_number"), detail)
    if not (email or phone or known is not None):
        return _invalid(apath, "A profile requires an id, an email or a phone_number.")
    return None


def _check_consented_at(
    topics: dict[str, Any], spath: Path, historical: bool, now: datetime
) -> ErrorItem | None:
    """historical_import needs a past `consented_at` per consent; a live subscribe none."""
    for topic, consented_at in topics.items():
        where = (*spath, *topic.split("."), "consented_at")
        if not historical:
            if consented_at is not None:
                detail = "consented_at can only be set when historical_import is true."
                return _invalid(where, detail)
            continue
        if consented_at is None:
            detail = "consented_at is required for each consent when historical_import is true."
            return _invalid(where, detail)
        moment = parse_time(consented_at)
        if moment is None:
            return _invalid(where, f"{consented_at!r} is not a valid ISO 8601 date-time.")
        if moment > now:
            return _invalid(where, "consented_at must be in the past.")
    return None


def _check_subscribe(
    sandbox: Sandbox, entries: list[tuple[Path, Any]], historical: bool, now: datetime
) -> list[ErrorItem]:
    errors: list[ErrorItem] = []
    for path, entry in entries:
        attrs = entry["attributes"]
        topics = topics_of(attrs["subscriptions"])
        apath = (*path, "attributes")
        known = None
        found: ErrorItem | None = None
        if entry.get("id"):
            live = sandbox.store.canonical_id(entry["id"])
            if live is None:
                found = _invalid((*path, "id"), f"Profile {entry['id']} does not exist.")
            else:
                known = sandbox.store.profiles[live]
        if found is None and not topics:
            found = _invalid((*apath, "subscriptions"), "Name at least one channel to consent to.")
        found = (
            found
            or _check_identity(attrs, apath, topics, known)
            or _check_consented_at(topics, (*apath, "subscriptions"), historical, now)
        )
        if found is not None:
            errors.append(found)
    return errors


def _invalid(path: Path, detail: str) -> ErrorItem:
    return ErrorItem(400, "invalid", detail, pointer=pointer_of(path))


def _too_many(count: int, limit: int) -> None:
    if count > limit:
        raise invalid(f"At most {limit} profiles per request; got {count}.", pointer_of(ROOT))


async def bulk_subscribe_profiles(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/profile-subscription-bulk-create-jobs: grant consent (≤ 1,000 profiles); 202."""
    data = body["data"]
    attrs = data["attributes"]
    profiles = attrs["profiles"]["data"]
    _too_many(len(profiles), MAX_SUBSCRIBE)
    historical = bool(attrs.get("historical_import"))
    mailing_list = related_list(sandbox, data)
    now = datetime.now(UTC)
    entries = [(ROOT + (i,), entry) for i, entry in enumerate(profiles)]
    bulk_errors(request, entries, lambda ok: _check_subscribe(sandbox, ok, historical, now), body)
    job = new_job(
        "subscribe",
        len(profiles),
        iso(now),
        list_id=mailing_list.id if mailing_list else None,
        historical=historical,
    )
    run = partial(
        run_subscribe,
        sandbox.store,
        job,
        profiles,
        mailing_list=mailing_list,
        double_opt_in_default=sandbox.config.default_opt_in_process == "double_opt_in",
        custom_source=attrs.get("custom_source"),
    )
    sandbox.accept("subscribe", len(profiles), run)
    return accepted()


def _check_unsubscribe(entries: list[tuple[Path, Any]]) -> list[ErrorItem]:
    errors: list[ErrorItem] = []
    for path, entry in entries:
        attrs = entry["attributes"]
        apath = (*path, "attributes")
        topics = topics_of(attrs["subscriptions"])
        if not topics:
            detail = "Name at least one channel to unsubscribe from."
            errors.append(_invalid((*apath, "subscriptions"), detail))
            continue
        found = _check_identity(attrs, apath, topics, None)
        if found is not None:
            errors.append(found)
    return errors


async def bulk_unsubscribe_profiles(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/profile-subscription-bulk-delete-jobs: withdraw consent (≤ 100); 202.

    With a list, a member of it is taken off the list; everyone else is unsubscribed globally.
    An identifier no profile holds yet gets a new profile that is unsubscribed.
    """
    data = body["data"]
    profiles = data["attributes"]["profiles"]["data"]
    _too_many(len(profiles), MAX_UNSUBSCRIBE)
    mailing_list = related_list(sandbox, data)
    entries = [(ROOT + (i,), entry) for i, entry in enumerate(profiles)]
    bulk_errors(request, entries, _check_unsubscribe, body)
    job = new_job(
        "unsubscribe",
        len(profiles),
        iso(datetime.now(UTC)),
        list_id=mailing_list.id if mailing_list else None,
    )
    run = partial(run_unsubscribe, sandbox.store, job, profiles, mailing_list)
    sandbox.accept("unsubscribe", len(profiles), run)
    return accepted()


def _suppression_target(sandbox: Sandbox, data: dict[str, Any]) -> MailingList | None:
    """Exactly one of profiles, a list or a segment; returns the list if that is the target."""
    attrs = data.get("attributes") or {}
    relationships = data.get("relationships") or {}
    named = [
        name
        for name, present in (
            ("profiles", attrs.get("profiles") is not None),
            ("list", bool((relationships.get("list") or {}).get("data"))),
            ("segment", bool((relationships.get("segment") or {}).get("data"))),
        )
        if present
    ]
    if len(named) != 1:
        detail = "Provide exactly one of profiles, a list or a segment"
        raise invalid(f"{detail}; got {', '.join(named) or 'none'}.", pointer="/data")
    if named == ["segment"]:
        segment = relationships["segment"]["data"]["id"]
        item = ErrorItem(
            404,
            "not_found",
            f"Segment {segment} does not exist.",
            pointer="/data/relationships/segment/data/id",
        )
        raise ApiError(404, [item])
    return related_list(sandbox, data)


def _check_emails(entries: list[tuple[Path, Any]]) -> list[ErrorItem]:
    errors: list[ErrorItem] = []
    for path, entry in entries:
        email = entry["attributes"]["email"]
        if not valid_email(email):
            where = (*path, "attributes", "email")
            errors.append(_invalid(where, f"Invalid email address: {email!r}."))
    return errors


def _suppression_job(
    request: web.Request, kind: str, job_id: str, stamp: str, total: int, lists: list[str]
) -> web.Response:
    """Klaviyo's 202 answer: the queued suppression job."""
    link = f"{base_url(request)}/api/profile-suppression-bulk-{kind}-jobs/{job_id}/"
    document = {
        "data": {
            "type": f"profile-suppression-bulk-{kind}-job",
            "id": job_id,
            "attributes": {
                "status": "queued",
                "created_at": stamp,
                "total_count": total,
                "completed_count": 0,
                "completed_at": None,
                "skipped_count": 0,
            },
            "relationships": {
                "lists": {"data": [{"type": "list", "id": i} for i in lists]},
                "segments": {"data": []},
            },
            "links": {"self": link},
        },
        "links": {"self": link},
    }
    return json_response(document, 202)


async def _suppression(
    request: web.Request, sandbox: Sandbox, body: Any, *, lift: bool
) -> web.StreamResponse:
    data = body["data"]
    mailing_list = _suppression_target(sandbox, data)
    store = sandbox.store
    stamp = iso(datetime.now(UTC))
    if mailing_list is not None:
        targets = list(mailing_list.members)  # profile ids, looked up again when the job runs
    else:
        entries_data = data["attributes"]["profiles"]["data"]
        _too_many(len(entries_data), MAX_SUPPRESS)
        entries = [(ROOT + (i,), entry) for i, entry in enumerate(entries_data)]
        bulk_errors(request, entries, _check_emails, body)
        targets = [entry["attributes"]["email"] for entry in entries_data]
    kind = "delete" if lift else "create"
    job = new_job(
        "unsuppress" if lift else "suppress",
        len(targets),
        stamp,
        list_id=mailing_list.id if mailing_list else None,
    )
    run = partial(run_suppression, store, job, targets, by_id=mailing_list is not None)
    sandbox.accept(job.kind, len(targets), run)
    lists = [mailing_list.id] if mailing_list else []
    return _suppression_job(request, kind, job.id, stamp, len(targets), lists)


async def bulk_suppress_profiles(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/profile-suppression-bulk-create-jobs: suppress emails (≤ 100) or a list's
    members; an unknown email is created and suppressed. 202 with the job."""
    return await _suppression(request, sandbox, body, lift=False)


async def bulk_unsuppress_profiles(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/profile-suppression-bulk-delete-jobs: lift USER_SUPPRESSED only (≤ 100)."""
    return await _suppression(request, sandbox, body, lift=True)


async def create_client_subscription(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /client/subscriptions: one profile's consent from a browser (public key); 202.

    Without a `subscriptions` object, marketing consent for each channel whose identifier is
    given; the list (required) decides single or double opt-in. Errors are 400s, as on every
    client endpoint.
    """
    data = body["data"]
    who = data["attributes"]["profile"]["data"]
    attrs = who["attributes"]
    apath: Path = ("data", "attributes", "profile", "data", "attributes")
    if "subscriptions" in attrs:
        topics = topics_of(attrs["subscriptions"] or {})
    else:
        topics = {}
        if attrs.get("email"):
            topics["email.marketing"] = None
        if attrs.get("phone_number"):
            topics["sms.marketing"] = None
    found = _check_identity(attrs, apath, topics, None)
    if found is None and not (attrs.get("email") or attrs.get("phone_number")):
        found = _invalid(apath, "One of email or phone_number is required.")
    if found is None and not topics:
        found = _invalid((*apath, "subscriptions"), "Name at least one channel to consent to.")
    found = found or _check_consented_at(
        topics, (*apath, "subscriptions"), False, datetime.now(UTC)
    )
    raise_errors(with_long_strings(request, [found] if found else [], body, 0)[:1])
    mailing_list = related_list(sandbox, data, status=400)
    job = new_job(
        "client_subscription",
        1,
        iso(datetime.now(UTC)),
        list_id=mailing_list.id if mailing_list else None,
    )
    run = partial(
        run_client_subscription,
        sandbox.store,
        job,
        who,
        topics,
        mailing_list=mailing_list,
        double_opt_in_default=sandbox.config.default_opt_in_process == "double_opt_in",
        custom_source=data["attributes"].get("custom_source"),
    )
    try:
        sandbox.accept(
            "client_subscription", 1, run, partial(check_client_subscription, sandbox.store, who)
        )
    except ProfileNotFound as exc:
        raise not_found(exc, "/data/attributes/profile/data/id") from exc
    return accepted()
