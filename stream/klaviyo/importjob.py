"""Profile bulk import jobs: wait for a job to finish, then read its per-record failures.

`POST /api/profile-bulk-import-jobs` validates a request as a whole (a 400 names bad entries)
but processes the profiles later: a profile that fails then (a conflict, say) shows only in
the job's `/import-errors`. Reading them turns one accepted job into per-record outcomes, so
exactly the failed profiles are dead-lettered and the others count as delivered. Polls go
through the deliver stage's paced, retried `Requester`, so they never wait in a request slot.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from yarl import URL

from stream.core.errors import ImportJobUnknown, ImportRecordFailed
from stream.klaviyo.client import (
    PROFILES_BULK,
    PROFILES_BULK_ERRORS,
    PROFILES_BULK_JOB,
    Requester,
    Response,
)

POLL_FIRST_SECONDS = 0.2
POLL_MAX_SECONDS = 5.0
ERRORS_PAGE_SIZE = 100
FINISHED = frozenset({"complete", "cancelled", "failed"})
_PROFILE_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")



async def import_failures(
    request: Requester, accepted: Response, profiles: list[dict[str, Any]], max_seconds: float
) -> dict[int, ImportRecordFailed]:
    """Index in `profiles` → why Klaviyo failed it, once the job of `accepted` has finished.

    Raises `ImportJobUnknown` when the outcome cannot be read within `max_seconds`, or when an
    import error names a profile we cannot place (then no record may be called delivered).
    """
    deadline = time.monotonic() + max_seconds
    job_id = _job_id(accepted.body)
    if job_id is None:
        raise ImportJobUnknown("profile bulk import answered 202 without a job id")
    path = f"{PROFILES_BULK}/{job_id}"
    delay = POLL_FIRST_SECONDS
    while True:
        attributes = _attributes((await request("GET", path, budget=PROFILES_BULK_JOB)).body)
        status = attributes.get("status")
        if status in FINISHED:
            break
        if time.monotonic() + delay > deadline:
            raise ImportJobUnknown(f"import job {job_id} not finished after {max_seconds:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, POLL_MAX_SECONDS)
    if status != "complete":
        raise ImportJobUnknown(f"import job {job_id} ended with status {status!r}")
    if not attributes.get("failed_count"):
        return {}
    failures: dict[int, ImportRecordFailed] = {}
    page: str | None = f"{path}/import-errors?page[size]={ERRORS_PAGE_SIZE}"
    while page is not None:
        body = (await request("GET", page, budget=PROFILES_BULK_ERRORS)).body or {}
        for error in body.get("data") or []:
            attrs = error.get("attributes") or {} if isinstance(error, dict) else {}
            index = _place(attrs, profiles)
            if index is None:
                raise ImportJobUnknown(f"import job {job_id}: an import error names no profile")
            failures[index] = _failure(attrs)
        nxt = (body.get("links") or {}).get("next")
        page = URL(nxt).path_qs if nxt else None
    return failures


def _job_id(body: Any) -> str | None:
    data = body.get("data") if isinstance(body, dict) else None
    job_id = data.get("id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def _attributes(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    return attributes if isinstance(attributes, dict) else {}


def _place(attrs: dict[str, Any], profiles: list[dict[str, Any]]) -> int | None:
    """The profile an import error is about: by its pointer, else by its original payload."""
    pointer = (attrs.get("source") or {}).get("pointer") or ""
    match = _PROFILE_POINTER.match(pointer)
    if match is not None and int(match.group(1)) < len(profiles):
        return int(match.group(1))
    payload = attrs.get("original_payload")
    sent = payload.get("attributes") if isinstance(payload, dict) else None
    for index, profile in enumerate(profiles):
        if sent == profile:
            return index
    return None


def _failure(attrs: dict[str, Any]) -> ImportRecordFailed:
    code = attrs.get("code") or ""
    detail = attrs.get("detail") or attrs.get("title") or ""
    error = {"code": code, "detail": detail, "source": attrs.get("source") or {}}
    return ImportRecordFailed(f"Klaviyo import error {code}: {detail}".strip(), 0, [error])
