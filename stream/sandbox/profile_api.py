"""Handlers of Klaviyo's profile endpoints: upsert, bulk import jobs, merge, GET /api/profiles."""

from __future__ import annotations

import re
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
from .errors import ApiError, ErrorItem, invalid, pointer_of
from .profiles import ProfileConflict, ProfileNotFound
from .resources import job_resource, profile_resource
from .state import Sandbox
from .validation import MAX_BULK_PROFILES, Path, check_profile, check_profiles

_FILTER = re.compile(r"^\s*(equals|any)\(\s*([A-Za-z_]+)\s*,\s*(.*?)\s*\)\s*$", re.S)
_QUOTED = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")
_FILTER_FIELDS = frozenset({"id", "email", "phone_number", "external_id", "_kx"})


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
    """POST /api/profile-bulk-import-jobs: validate all, then run the job; 202 with the job."""
    root: Path = ("data", "attributes", "profiles", "data")
    profiles = body["data"]["attributes"]["profiles"]["data"]
    entries = [(root + (i,), entry) for i, entry in enumerate(profiles)]
    if len(profiles) > MAX_BULK_PROFILES:
        raise invalid(f"At most {MAX_BULK_PROFILES} profiles per request.", pointer_of(root))
    bulk_errors(request, entries, check_profiles, body)
    relationships = body["data"].get("relationships") or {}
    list_ids = [item["id"] for item in (relationships.get("lists") or {}).get("data") or []]
    job = sandbox.store.run_import(profiles, list_ids)
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


def _links(request: web.Request, offset: int, size: int, total: int) -> dict[str, str]:
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
        "links": _links(request, offset, size, len(job.errors)),
    }
    return json_response(document)


async def merge_profiles(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """POST /api/profile-merge: fold the related source profiles into the destination (201)."""
    data = body["data"]
    sources = data["relationships"]["profiles"].get("data") or []
    if not sources:
        raise invalid(
            "At least one source profile is required.",
            pointer="/data/relationships/profiles/data",
        )
    try:
        profile = sandbox.store.merge(data["id"], [item["id"] for item in sources])
    except ProfileNotFound as exc:
        if exc.profile_id == data["id"]:
            pointer = "/data/id"
        else:
            index = next(i for i, s in enumerate(sources) if s["id"] == exc.profile_id)
            pointer = f"/data/relationships/profiles/data/{index}/id"
        raise not_found(exc, pointer, status=404) from exc
    except ValueError as exc:
        raise invalid(str(exc), pointer="/data/relationships/profiles/data") from exc
    base = base_url(request)
    document = {
        "data": {
            "type": "profile",
            "id": profile.id,
            "links": {"self": f"{base}/api/profiles/{profile.id}/"},
        },
        "links": {"self": f"{base}/api/profile-merge/"},
    }
    return json_response(document, 201)


def parse_filter(text: str) -> tuple[str, list[str]]:
    """`equals(email,"a@b.co")` or `any(id,["x","y"])` → (field, values); else a 400."""
    match = _FILTER.match(text)
    if not match:
        raise invalid(f"Invalid filter: {text!r}.", parameter="filter")
    operator, field_name, raw = match.groups()
    if field_name not in _FILTER_FIELDS:
        raise invalid(f"Filtering on {field_name!r} is not supported.", parameter="filter")
    if operator == "equals":
        value = _QUOTED.fullmatch(raw)
        if not value:
            raise invalid(f"Invalid filter value: {raw}.", parameter="filter")
        return field_name, [value.group(1) if value.group(1) is not None else value.group(2)]
    if not (raw.startswith("[") and raw.endswith("]")):
        raise invalid(f"any() needs a list: {raw}.", parameter="filter")
    values = [a if a or not b else b for a, b in _QUOTED.findall(raw)]
    return field_name, values


async def get_profiles(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """GET /api/profiles: all live profiles, or those a filter on an identifier selects."""
    offset, size = _page(request)
    text = request.query.get("filter")
    if text:
        field_name, values = parse_filter(text)
        profiles = sandbox.store.find_profiles(field_name, values)
    else:
        profiles = list(sandbox.store.profiles.values())
    base = base_url(request)
    document = {
        "data": [profile_resource(p, base) for p in profiles[offset : offset + size]],
        "links": _links(request, offset, size, len(profiles)),
    }
    return json_response(document)
