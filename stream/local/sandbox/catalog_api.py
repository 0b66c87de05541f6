"""Handlers of Klaviyo's catalog endpoints: bulk create / update / delete jobs, their status, and
the catalog read back (`GET /api/catalog-items` and the like). The model (what a job refuses,
how long it takes, the 500-job cap) is `catalog.py`'s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web

from .api import Handler, base_url, bulk_errors, json_response
from .catalog import (
    ENTRIES,
    MAX_PER_JOB,
    PREFIX,
    TYPES,
    Catalog,
    Job,
    Resource,
    entry_id,
    job_type,
)
from .errors import ApiError, ErrorItem, invalid, pointer_of
from .filters import Condition, FilterSyntaxError, parse_filter
from .profile_api import _page as page_of
from .profile_api import page_links
from .state import Sandbox
from .validation import Path

PATHS = {"item": "catalog-item", "variant": "catalog-variant", "category": "catalog-category"}
# per kind: filter field -> the operator Klaviyo allows on it (the slices' `filter` docs)
FILTERS = {
    "item": {"ids": "any", "category.id": "equals", "title": "contains", "published": "equals"},
    "variant": {"ids": "any", "item.id": "equals", "sku": "equals", "title": "contains",
                "published": "equals"},
    "category": {"ids": "any", "item.id": "equals", "name": "contains"},
}  # fmt: skip


def job_path(kind: str, action: str, job_id: str) -> str:
    """`/api/catalog-item-bulk-create-jobs/<id>` and the like."""
    return f"/api/{PATHS[kind]}-bulk-{action}-jobs/{job_id}"


def job_resource(job: Job, base: str) -> dict[str, Any]:
    """A catalog bulk job the way its POST (202) and GET answer it."""
    link = base + job_path(job.kind, job.action, job.id)
    name = ENTRIES[job.kind]
    return {
        "type": job_type(job.kind, job.action),
        "id": job.id,
        "attributes": {
            "status": job.status,
            "created_at": job.created_at,
            "total_count": job.total_count or len(job.requested),
            "completed_count": job.completed_count,
            "failed_count": job.failed_count,
            "completed_at": job.completed_at,
            "errors": list(job.errors),
            "expires_at": job.expires_at,
        },
        "relationships": {
            name: {
                "data": [{"type": TYPES[job.kind], "id": rid} for rid in job.resource_ids],
                "links": {"self": f"{link}/relationships/{name}/", "related": f"{link}/{name}/"},
            }
        },
        "links": {"self": f"{link}/"},
    }


def _check_entries(kind: str, action: str, entries: list[tuple[Path, Any]]) -> list[ErrorItem]:
    """Klaviyo's checks beyond the schema: id formats, one entry per resource per request."""
    errors: list[ErrorItem] = []
    seen: set[str] = set()
    for path, entry in entries:
        if action == "create":
            external = entry["attributes"]["external_id"]
            where: Path = (*path, "attributes", "external_id")
            if not external or len(external) > 255:
                errors.append(_bad(where, "external_id must be 1 to 255 characters."))
                continue
        else:
            where = (*path, "id")
            if not entry["id"].startswith(PREFIX) or entry["id"] == PREFIX:
                detail = f"Invalid catalog id {entry['id']!r}: expected {PREFIX}<external id>."
                errors.append(_bad(where, detail))
                continue
        rid = entry_id(action, entry)
        if rid in seen:
            errors.append(_bad(where, f"{rid} appears more than once in this request."))
            continue
        seen.add(rid)
        related = _related_ids(entry)
        if any(not r.startswith(PREFIX) for _, r in related):
            bad = next(p for p, r in related if not r.startswith(PREFIX))
            errors.append(_bad((*path, *bad), f"Invalid catalog id: expected {PREFIX}<id>."))
    return errors


def _related_ids(entry: dict[str, Any]) -> list[tuple[Path, str]]:
    relationships = entry.get("relationships") or {}
    out: list[tuple[Path, str]] = []
    for name, ref in relationships.items():
        data = ref.get("data") if isinstance(ref, dict) else None
        if isinstance(data, dict):
            out.append((("relationships", name, "data", "id"), data["id"]))
        elif isinstance(data, list):
            out += [(("relationships", name, "data", j, "id"), d["id"]) for j, d in enumerate(data)]
    return out


def _bad(path: Path, detail: str) -> ErrorItem:
    return ErrorItem(400, "invalid", detail, pointer=pointer_of(path))


def bulk_job(kind: str, action: str) -> Handler:
    """POST /api/catalog-<kind>-bulk-<action>-jobs: validate, queue the job; 202 with it."""

    async def handle(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
        root: Path = ("data", "attributes", ENTRIES[kind], "data")
        listed = body["data"]["attributes"][ENTRIES[kind]]["data"]
        if len(listed) > MAX_PER_JOB:
            detail = f"At most {MAX_PER_JOB} resources per request; got {len(listed)}."
            raise invalid(detail, pointer=pointer_of(root))
        entries = [(root + (i,), entry) for i, entry in enumerate(listed)]
        bulk_errors(request, entries, lambda clean: _check_entries(kind, action, clean), body)
        catalog: Catalog = sandbox.catalog
        loop_now = _loop_time()
        if catalog.in_progress >= catalog.cap:
            catalog.refused_over_cap += 1
            wait = catalog.retry_after(loop_now)
            detail = (
                f"Too many catalog jobs in progress (at most {catalog.cap}); "
                f"expected available in {wait} second."
            )
            raise ApiError(429, [ErrorItem(429, "throttled", detail)], {"Retry-After": str(wait)})
        config = sandbox.config
        seconds = config.time_scale * (
            config.catalog_job_seconds + config.catalog_job_seconds_per_resource * len(listed)
        )
        job = catalog.submit(kind, action, listed, seconds)
        job.due = loop_now + seconds
        sandbox.scheduler.later(seconds / 4, partial(catalog.start, job))
        sandbox.scheduler.later(seconds, partial(catalog.complete, job))
        return json_response({"data": job_resource(job, base_url(request))}, 202)

    return handle


def get_job(kind: str, action: str) -> Handler:
    """GET /api/catalog-<kind>-bulk-<action>-jobs/{job_id}: status, counts, per-resource errors."""

    async def handle(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        job = sandbox.catalog.jobs.get(job_id)
        if job is None or (job.kind, job.action) != (kind, action):
            detail = f"Job {job_id} does not exist."
            raise ApiError(404, [ErrorItem(404, "not_found", detail, parameter="job_id")])
        base = base_url(request)
        document = {
            "data": job_resource(job, base),
            "links": {"self": base + job_path(kind, action, job.id)},
        }
        return json_response(document)

    return handle


def get_resources(kind: str) -> Handler:
    """GET /api/catalog-items (variants, categories): all, or those the `filter` selects,
    oldest first, 100 a page by default."""

    async def handle(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
        offset, size = page_of(request)
        if "page[size]" not in request.query:
            size = 100  # the catalog's default page (profiles': 20)
        catalog: Catalog = sandbox.catalog
        found = list(catalog.resources[kind].values())
        text = request.query.get("filter")
        if text is not None:
            for test in _conditions(kind, text, catalog):
                found = [r for r in found if test(r)]
        if request.query.get("sort") == "-created":
            found.reverse()
        base = base_url(request)
        document = {
            "data": [catalog.resource(r, base) for r in found[offset : offset + size]],
            "links": page_links(request, offset, size, len(found)),
        }
        return json_response(document)

    return handle


def _conditions(kind: str, text: str, catalog: Catalog) -> list[Callable[[Resource], bool]]:
    """The filter's conditions as tests, each checked against what the kind allows."""
    try:
        conditions = parse_filter(text)
    except FilterSyntaxError as exc:
        raise invalid(f"Invalid filter: {exc}.", parameter="filter") from exc
    return [_test(kind, c, catalog) for c in conditions]


def _test(kind: str, condition: Condition, catalog: Catalog) -> Callable[[Resource], bool]:
    allowed = FILTERS[kind].get(condition.field)
    if allowed is None or allowed != condition.operator:
        detail = f"{condition.operator}({condition.field},…) is not allowed for this resource."
        raise invalid(detail, parameter="filter")
    value = condition.value
    if condition.field == "ids":
        if not isinstance(value, list):
            raise invalid("any(ids,…) takes a list of ids.", parameter="filter")
        wanted = set(value)
        return lambda r: r.id in wanted
    if condition.field == "category.id":
        return lambda r: value in r.related
    if condition.field == "item.id":
        if kind == "variant":
            return lambda r: r.item_id == value
        item = catalog.resources["item"].get(str(value))
        return lambda r: item is not None and r.id in item.related
    name = condition.field
    if condition.operator == "contains":
        return lambda r: str(value) in str(r.attributes.get(name) or "")
    return lambda r: r.attributes.get(name) == value


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def handlers() -> dict[str, tuple[Handler, int]]:
    """operationId → (handler, depth of one bulk entry) for every catalog endpoint."""
    out: dict[str, tuple[Handler, int]] = {}
    plural = {"item": "catalog_items", "variant": "catalog_variants",
              "category": "catalog_categories"}  # fmt: skip
    job_names = {"item": "catalog_items", "variant": "variants", "category": "categories"}
    for kind in ("item", "variant", "category"):
        for action in ("create", "update", "delete"):
            out[f"bulk_{action}_{plural[kind]}"] = (bulk_job(kind, action), 5)
            out[f"get_bulk_{action}_{job_names[kind]}_job"] = (get_job(kind, action), 0)
        out[f"get_{plural[kind]}"] = (get_resources(kind), 0)
    return out
