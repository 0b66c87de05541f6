"""Handlers of Klaviyo's profile endpoints: upsert, bulk import jobs, merge, GET /api/profiles.

The upsert answers with the profile, so it is applied at once; a bulk import is a job
(`Sandbox.accept`), applied now or after `job_delay_seconds`.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from aiohttp import web

from .api import (
    base_url,
    bulk_errors,
    json_response,
    not_found,
    raise_errors,
    with_long_strings,
)
from .consent import api_subscriptions
from .errors import ApiError, ErrorItem, invalid, pointer_of
from .filters import Condition, FilterSyntaxError, parse_filter
from .profiles import Profile, ProfileConflict, ProfileNotFound, norm
from .resources import job_resource, profile_resource
from .state import Sandbox
from .validation import MAX_BULK_PROFILES, Path, check_profile, check_profiles, parse_time


async def create_or_update_profile(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/profile-import: upsert; 201 created, 200 updated, 409 duplicate_profile."""
    found = check_profile(body["data"], ("data",), anonymous_ok=False)
    raise_errors(with_long_strings(request, [found] if found else [], body, 0)[:1])
    try:
        profile, created = sandbox.store.upsert_profile(body["data"])
    except ProfileNotFound as exc:
        raise not_found(exc, "/data/id", status=404) from exc
    except ProfileConflict as exc:
        item = ErrorItem(
            409,
            "duplicate_profile",
            "A profile already exists with one of these identifiers.",
            pointer="/data/attributes",
            meta={"duplicate_profile_id": exc.duplicate_id},
        )
        raise ApiError(409, [item]) from exc
    base = base_url(request)
    document = {
        "data": profile_resource(profile, base),
        "links": {"self": f"{base}/api/profile-import/"},
    }
    return json_response(document, 201 if created else 200)


async def bulk_import_profiles(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/profile-bulk-import-jobs: validate all, then queue the job; 202 with the job.

    The job reads `queued` until it runs (now, or `job_delay_seconds` later), then `complete`
    with its counts and import errors. Profiles it imports join the related lists (which must
    exist); no consent changes.
    """
    root: Path = ("data", "attributes", "profiles", "data")
    profiles = body["data"]["attributes"]["profiles"]["data"]
    entries = [(root + (i,), entry) for i, entry in enumerate(profiles)]
    if len(profiles) > MAX_BULK_PROFILES:
        raise invalid(f"At most {MAX_BULK_PROFILES} profiles per request.", pointer_of(root))
    bulk_errors(request, entries, check_profiles, body)
    relationships = body["data"].get("relationships") or {}
    list_ids = [item["id"] for item in (relationships.get("lists") or {}).get("data") or []]
    for index, list_id in enumerate(list_ids):
        if list_id not in sandbox.store.lists:
            pointer = f"/data/relationships/lists/data/{index}/id"
            item = ErrorItem(404, "not_found", f"List {list_id} does not exist.", pointer=pointer)
            raise ApiError(404, [item])
    store = sandbox.store
    job = store.new_import(len(profiles), list_ids)
    sandbox.accept("profile_import", len(profiles), partial(store.run_import, job, profiles))
    return json_response({"data": job_resource(job, base_url(request), as_created=True)}, 202)


def _job(request: web.Request, sandbox: Sandbox, name: str) -> Any:
    job = sandbox.store.jobs.get(request.match_info[name])
    if job is None:
        detail = f"Profile bulk import job {request.match_info[name]} does not exist."
        raise ApiError(404, [ErrorItem(404, "not_found", detail, parameter=name)])
    return job


async def get_bulk_import_profiles_job(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """GET /api/profile-bulk-import-jobs/{job_id}: status and counts."""
    job = _job(request, sandbox, "job_id")
    base = base_url(request)
    document = {
        "data": job_resource(job, base),
        "links": {"self": f"{base}/api/profile-bulk-import-jobs/{job.id}/"},
    }
    return json_response(document)


def _page(request: web.Request) -> tuple[int, int]:
    """(offset, size) from page[cursor] and page[size] (default 20, 1..100)."""
    raw_size = request.query.get("page[size]", "20")
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= 100:
        raise invalid("page[size] must be an integer from 1 to 100.", parameter="page[size]")
    cursor = request.query.get("page[cursor]", "0")
    if not cursor.isdigit():
        raise invalid("Invalid page cursor.", parameter="page[cursor]")
    return int(cursor), int(raw_size)


def page_links(request: web.Request, offset: int, size: int, total: int) -> dict[str, str]:
    """JSON:API `links` of one page: self, and next/prev cursors where there are more."""
    url = request.url
    links = {"self": str(request.url)}
    if offset + size < total:
        links["next"] = str(url.update_query({"page[cursor]": str(offset + size)}))
    if offset > 0:
        links["prev"] = str(url.update_query({"page[cursor]": str(max(0, offset - size))}))
    return links


async def get_errors_for_bulk_import_profiles_job(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """GET /api/profile-bulk-import-jobs/{id}/import-errors: per-record failures, paged."""
    job = _job(request, sandbox, "id")
    offset, size = _page(request)
    document = {
        "data": job.errors[offset : offset + size],
        "links": page_links(request, offset, size, len(job.errors)),
    }
    return json_response(document)


async def merge_profiles(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """POST /api/profile-merge: queue folding the one source profile into the destination.

    Klaviyo "queues an asynchronous task" and "accepts only one source profile": the answer
    (201, the destination) comes at once, the merge lands `merge_delay_seconds` later. Until
    then the source exists, is found by GET /api/profiles, and upserts naming both profiles'
    identifiers still answer 409. A caller knows the merge landed when the source is gone.
    """
    data = body["data"]
    sources = data["relationships"]["profiles"].get("data") or []
    pointer = "/data/relationships/profiles/data"
    if len(sources) != 1:
        detail = "This endpoint accepts only one source profile"
        raise invalid(f"{detail}; got {len(sources)}.", pointer=pointer)
    try:
        task = sandbox.queue_merge(data["id"], sources[0]["id"])
    except ProfileNotFound as exc:
        where = "/data/id" if exc.profile_id == data["id"] else f"{pointer}/0/id"
        raise not_found(exc, where, status=404) from exc
    except ValueError as exc:
        raise invalid(str(exc), pointer=pointer) from exc
    base = base_url(request)
    document = {
        "data": {
            "type": "profile",
            "id": task.destination_id,
            "links": {"self": f"{base}/api/profiles/{task.destination_id}/"},
        },
        "links": {"self": f"{base}/api/profile-merge/"},
    }
    return json_response(document, 201)


_IDENTIFIER_FIELDS = ("id", "email", "phone_number", "external_id")
_TIME_FIELDS = ("created", "updated")


def _check_condition(condition: Condition) -> None:
    """A 400 for a field/operator pair GET /api/profiles does not allow, or a mistyped value."""
    field_name, operator, value = condition.field, condition.operator, condition.value
    if field_name in _IDENTIFIER_FIELDS or field_name == "_kx":
        allowed = ("equals", "any") if field_name != "_kx" else ("equals",)
        if operator not in allowed:
            raise _bad_filter(f"Operator {operator!r} is not allowed for {field_name!r}.")
        values = value if operator == "any" else [value]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            kind = "a list of strings" if operator == "any" else "a quoted string"
            raise _bad_filter(f"{operator}({field_name},…) takes {kind}.")
    elif field_name in _TIME_FIELDS:
        if operator not in ("greater-than", "less-than"):
            raise _bad_filter(f"Operator {operator!r} is not allowed for {field_name!r}.")
        if not isinstance(value, datetime):
            raise _bad_filter(f"{field_name} takes a date-time written without quotes.")
    else:
        raise _bad_filter(f"Filtering on {field_name!r} is not supported.")


def _bad_filter(detail: str) -> ApiError:
    return invalid(detail, parameter="filter")


def _selects(profile: Profile, condition: Condition) -> bool:
    """Whether `profile` satisfies one (checked) condition."""
    field_name, value = condition.field, condition.value
    if field_name in _TIME_FIELDS:
        stamp = parse_time(getattr(profile, field_name))
        if stamp is None:
            return False
        return stamp > value if condition.operator == "greater-than" else stamp < value
    wanted = value if condition.operator == "any" else [value]
    if field_name == "id":
        return profile.id in wanted
    held = profile.attributes.get(field_name)
    return isinstance(held, str) and held in {norm(field_name, v) for v in wanted}


def select_profiles(sandbox: Sandbox, text: str) -> list[Profile]:
    """Live profiles matching every condition of the filter `text` (in creation order)."""
    try:
        conditions = parse_filter(text)
    except FilterSyntaxError as exc:
        raise _bad_filter(f"Invalid filter: {exc}.") from exc
    for condition in conditions:
        _check_condition(condition)
    store = sandbox.store
    first = conditions[0]
    if first.field in ("email", "phone_number", "external_id"):  # narrow through the index
        values = first.value if first.operator == "any" else [first.value]
        owners = {store.owner(first.field, v) for v in values} - {None}
        candidates = [p for p in store.profiles.values() if p.id in owners]
    else:
        candidates = list(store.profiles.values())
    return [p for p in candidates if all(_selects(p, c) for c in conditions)]


async def get_profiles(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """GET /api/profiles: all live profiles, or those the `filter` expression selects."""
    offset, size = _page(request)
    text = request.query.get("filter")
    if text is not None:
        profiles = select_profiles(sandbox, text)
    else:
        profiles = list(sandbox.store.profiles.values())
    extra = request.query.get("additional-fields[profile]", "")
    wanted = {name for name in extra.split(",") if name}
    if wanted - {"subscriptions", "predictive_analytics"}:
        detail = "additional-fields[profile] accepts subscriptions and predictive_analytics."
        raise invalid(detail, parameter="additional-fields[profile]")
    base = base_url(request)
    page = []
    for found in profiles[offset : offset + size]:
        resource = profile_resource(found, base)
        if "subscriptions" in wanted:
            resource["attributes"]["subscriptions"] = api_subscriptions(
                found.consents, found.suppressions
            )
        page.append(resource)
    document = {"data": page, "links": page_links(request, offset, size, len(profiles))}
    return json_response(document)
