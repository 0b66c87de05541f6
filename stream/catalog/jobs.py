"""Klaviyo's side of a catalog bulk job: send it, read its status, place its per-resource errors,
and look up which resources exist (to recover from a refused create or update).

Every request goes through the deliver stage's paced, retried `Requester`, under the budget of
its endpoint (a status GET under its path pattern).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson

from stream.core.errors import CatalogJobUnknown, CatalogResourceFailed
from stream.klaviyo.catalog import (
    ENTRIES,
    READ,
    Action,
    Kind,
    external_id,
    ids_filter,
    job_body,
    job_endpoint,
    status_budget,
    status_path,
)
from stream.klaviyo.client import Requester

IN_PROGRESS = frozenset({"queued", "processing"})
_POINTER = re.compile(r"^/data/attributes/(items|variants|categories)/data/(\d+)(?:/|$)")


@dataclass(frozen=True, slots=True)
class Status:
    """A job's answer: finished or not, (when complete) why each failed entry failed, and how
    long Klaviyo took (`completed_at - created_at`, when it says)."""

    finished: bool
    failed: dict[int, CatalogResourceFailed]
    seconds: float | None = None


async def submit(request: Requester, kind: Kind, action: Action, entries: list[bytes]) -> str:
    """Send one bulk job (entries already encoded); its id. `CatalogJobUnknown` when Klaviyo
    answered without one."""
    endpoint = job_endpoint(kind, action)
    body = job_body(kind, action, [orjson.Fragment(e) for e in entries])
    response = await request("POST", endpoint, body, budget=endpoint)
    data = response.body.get("data") if isinstance(response.body, dict) else None
    job_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(job_id, str) or not job_id:
        raise CatalogJobUnknown(f"{endpoint} answered {response.status} without a job id")
    return job_id


async def status(request: Requester, kind: Kind, action: Action, job_id: str, size: int) -> Status:
    """Ask once how a job of `size` entries is doing. `CatalogJobUnknown` when it is gone (404),
    was cancelled, or names an error we cannot place: then no entry may be called done."""
    from stream.core.errors import KlaviyoClientError

    try:
        response = await request(
            "GET", status_path(kind, action, job_id), budget=status_budget(kind, action)
        )
    except KlaviyoClientError as exc:
        if exc.status == 404:
            raise CatalogJobUnknown(f"catalog job {job_id} is gone (404)") from None
        raise
    attributes = _attributes(response.body)
    state = attributes.get("status")
    if state in IN_PROGRESS:
        return Status(False, {})
    if state != "complete":
        raise CatalogJobUnknown(f"catalog job {job_id} ended {state!r}")
    failed = place(attributes.get("errors") or [], kind, size, job_id)
    return Status(True, failed, _took(attributes))


def place(
    errors: list[Any], kind: Kind, size: int, job_id: str
) -> dict[int, CatalogResourceFailed]:
    """Entry index → Klaviyo's error, from the pointers of a completed job's `errors`."""
    failed: dict[int, CatalogResourceFailed] = {}
    for error in errors:
        source = error.get("source") if isinstance(error, dict) else None
        pointer = source.get("pointer") if isinstance(source, dict) else None
        match = _POINTER.match(pointer or "")
        if match is None or match.group(1) != ENTRIES[kind] or int(match.group(2)) >= size:
            raise CatalogJobUnknown(f"catalog job {job_id}: an error names no entry ({pointer})")
        detail = error.get("detail") or error.get("title") or ""
        code = error.get("code") or ""
        entry = {"code": code, "detail": detail, "source": {"pointer": pointer}}
        failed.setdefault(
            int(match.group(2)),
            CatalogResourceFailed(f"Klaviyo catalog job error {code}: {detail}", 0, [entry]),
        )
    return failed


def indices(pointers: list[str], kind: Kind, size: int) -> set[int]:
    """Entries a synchronous 400's pointers name (`/data/attributes/items/data/<i>/…`); empty
    when any pointer names none (then the request is bisected)."""
    found: set[int] = set()
    for pointer in pointers:
        match = _POINTER.match(pointer)
        if match is None or match.group(1) != ENTRIES[kind] or int(match.group(2)) >= size:
            return set()
        found.add(int(match.group(2)))
    return found


async def existing(request: Requester, kind: Kind, resource_ids: list[str]) -> set[str]:
    """Which of `resource_ids` (at most 100) exist at Klaviyo now."""
    path = READ[kind] + "?page[size]=100&filter=" + quote(ids_filter(resource_ids), safe="")
    response = await request("GET", path, budget=READ[kind])
    data = response.body.get("data") if isinstance(response.body, dict) else None
    found = {
        external_id(str(r["id"])) for r in data or [] if isinstance(r, dict) and "id" in r
    }
    return found & set(resource_ids)


def _took(attributes: dict[str, Any]) -> float | None:
    try:
        created = datetime.fromisoformat(str(attributes["created_at"]))
        completed = datetime.fromisoformat(str(attributes["completed_at"]))
    except (KeyError, ValueError):
        return None
    return max((completed - created).total_seconds(), 0.0)


def _attributes(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    return attributes if isinstance(attributes, dict) else {}
