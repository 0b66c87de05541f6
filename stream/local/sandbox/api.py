"""Handlers of Klaviyo's event endpoints, and helpers every handler shares.

Each runs after `app.guard` has authenticated the caller, spent rate-limit quota and checked
the body against the operation's OpenAPI schema; here come Klaviyo's further checks and the
effect on the store. Every handler is synchronous between awaits, so a request is atomic.
Event and client profile requests are jobs (`Sandbox.accept`): checked now, applied now or
after `job_delay_seconds`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError, ErrorItem, invalid, pointer_of
from .profiles import ProfileNotFound
from .state import Sandbox
from .store import DuplicateUniqueId, EventGroup
from .validation import (
    MAX_BULK_EVENTS,
    Path,
    check_bulk_events,
    check_profile,
    check_single_event,
    long_strings,
)

SCHEMA_ERRORS = web.RequestKey("sandbox_schema_errors", list)
"""Schema errors of a bulk body, left for the handler to combine with its own per-entry checks."""
STRINGS_FIT = web.RequestKey("sandbox_strings_fit", bool)
"""True when the raw body proved that none of its strings is over 100 KB (`strings_fit`)."""

Handler = Callable[[web.Request, Sandbox, Any], Awaitable[web.StreamResponse]]
JSON_API = "application/vnd.api+json"


def json_response(document: Any, status: int = 200) -> web.Response:
    """An orjson-encoded JSON:API response."""
    return web.Response(body=orjson.dumps(document), status=status, content_type=JSON_API)


def accepted() -> web.Response:
    """Klaviyo's empty 202."""
    return web.Response(status=202)


def base_url(request: web.Request) -> str:
    """scheme://host of this server as the caller sees it (for `links`)."""
    return f"{request.scheme}://{request.host}"


def raise_errors(errors: list[ErrorItem]) -> None:
    if errors:
        raise ApiError(400, errors)


def bulk_errors(
    request: web.Request,
    entries: list[tuple[Path, Any]],
    check: Callable[[list[tuple[Path, Any]]], list[ErrorItem]],
    body: Any,
) -> None:
    """Raise one 400 listing every bad bulk entry: schema errors, then `check` on the others."""
    schema = request.get(SCHEMA_ERRORS) or []
    bad = {_entry_of(error, len(entries[0][0])) for error in schema} if entries else set()
    clean = [(path, entry) for path, entry in entries if path not in bad] if bad else entries
    errors = [*schema, *check(clean)] if clean else list(schema)
    depth = len(entries[0][0]) if entries else 0
    errors = with_long_strings(request, errors, body, depth)
    errors.sort(key=lambda e: [p.zfill(12) for p in (e.pointer or "").split("/")])
    raise_errors(errors)


def _entry_of(error: ErrorItem, depth: int) -> tuple[str | int, ...]:
    parts = (error.pointer or "").split("/")[1 : depth + 1]
    return tuple(int(p) if p.isdigit() else p for p in parts)


def with_long_strings(
    request: web.Request, errors: list[ErrorItem], body: Any, depth: int
) -> list[ErrorItem]:
    """Add a 100 KB string error for every entry (path prefix of `depth`) not yet reported."""
    if request.get(STRINGS_FIT):
        return errors
    reported = {tuple((e.pointer or "").split("/")[1 : depth + 1]) for e in errors}
    for path in long_strings(body):
        group = tuple(str(p) for p in path[:depth])
        if group not in reported:
            reported.add(group)
            detail = "Strings must be at most 100 KB."
            errors.append(ErrorItem(400, "invalid", detail, pointer=pointer_of(path)))
    return errors


def not_found(exc: ProfileNotFound, pointer: str, status: int = 400) -> ApiError:
    detail = f"Profile {exc.profile_id} does not exist."
    return ApiError(
        status,
        [ErrorItem(status, "not_found" if status == 404 else "invalid", detail, pointer=pointer)],
    )


async def create_client_profile(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /client/profiles: find the profile like an event would, update it; 202."""
    found = check_profile(body["data"], ("data",), anonymous_ok=True)
    raise_errors(with_long_strings(request, [found] if found else [], body, 0)[:1])
    store = sandbox.store
    who = [EventGroup(body["data"], [])]
    try:
        sandbox.accept(
            "client_profile",
            1,
            partial(store.event_profile, body["data"]),
            partial(store.check_events, who),
        )
    except ProfileNotFound as exc:
        raise not_found(exc, "/data/id") from exc
    return accepted()


async def create_event(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """POST /api/events and /client/events: one event, its profile created or updated."""
    now = datetime.now(UTC)
    raise_errors(with_long_strings(request, check_single_event(body, now), body, 0)[:1])
    attrs = body["data"]["attributes"]
    groups = [EventGroup(attrs["profile"]["data"], [attrs])]
    store = sandbox.store
    try:
        sandbox.accept(
            "events", 1, partial(store.add_events, groups, now), partial(store.check_events, groups)
        )
    except ProfileNotFound as exc:
        raise not_found(exc, "/data/attributes/profile/data/id") from exc
    return accepted()


async def bulk_create_events(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/event-bulk-create-jobs: all entries valid or none stored; 202 without a job."""
    root: Path = ("data", "attributes", "events-bulk-create", "data")
    entries = [(root + (i,), entry) for i, entry in enumerate(_dig(body, root))]
    total = sum(_event_count(entry) for _, entry in entries)
    if total > MAX_BULK_EVENTS:
        detail = f"At most {MAX_BULK_EVENTS} events per request; got {total}."
        raise invalid(detail, pointer=pointer_of(root))
    now = datetime.now(UTC)
    bulk_errors(request, entries, lambda clean: check_bulk_events(clean, now), body)
    _store_bulk(sandbox, entries)
    return accepted()


async def bulk_create_client_events(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /client/event-bulk-create: one profile and its events."""
    entries: list[tuple[Path, dict[str, Any]]] = [(("data",), body["data"])]
    errors = check_bulk_events(entries, datetime.now(UTC))
    raise_errors(with_long_strings(request, errors, body, 0)[:1])
    _store_bulk(sandbox, entries)
    return accepted()


def _event_count(entry: Any) -> int:
    """How many events a (possibly malformed) bulk entry carries."""
    try:
        events = entry["attributes"]["events"]["data"]
    except (KeyError, TypeError):
        return 0
    return len(events) if isinstance(events, list) else 0


def _dig(body: Any, path: Path) -> Any:
    for part in path:
        body = body[part]
    return body


def _store_bulk(sandbox: Sandbox, entries: list[tuple[Path, dict[str, Any]]]) -> None:
    """Accept bulk entries as one job, turning an in-request unique_id repeat into a 400 for
    that event."""
    groups = [
        EventGroup(
            attrs["profile"]["data"],
            [e["attributes"] for e in attrs["events"]["data"]],
            bool(attrs.get("backfill")),
        )
        for attrs in (entry["attributes"] for _, entry in entries)
    ]
    store = sandbox.store
    size = sum(len(group.events) for group in groups)
    try:
        sandbox.accept(
            "events",
            size,
            partial(store.add_events, groups, datetime.now(UTC)),
            partial(store.check_events, groups),
        )
    except DuplicateUniqueId as exc:
        path = entries[exc.entry][0]
        where = (*path, "attributes", "events", "data", exc.event, "attributes", "unique_id")
        detail = (
            f"Duplicate unique_id {exc.unique_id!r} for the same profile and metric in "
            "this request; no events were processed."
        )
        raise invalid(detail, pointer=pointer_of(where)) from exc
    except ProfileNotFound as exc:
        index = next(i for i, g in enumerate(groups) if g.profile.get("id") == exc.profile_id)
        pointer = pointer_of((*entries[index][0], "attributes", "profile", "data", "id"))
        raise not_found(exc, pointer) from exc
