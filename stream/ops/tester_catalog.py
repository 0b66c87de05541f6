"""`test-event FILE.json` for a catalog record (`{"type": "catalog_item", "id": …}`): the bulk
job request the record makes, checked as the catalog stage reads it; sent unless `--dry-run`,
its job followed to the end, and a create Klaviyo refuses because the item exists sent again as
an update (as the service does, which decides from its state store beforehand).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from stream.catalog import jobs
from stream.catalog.records import TYPE_NAMES, Resource, parse
from stream.core.clients import require_klaviyo_credentials
from stream.core.errors import KlaviyoError, RecordError
from stream.core.settings import Settings
from stream.klaviyo.catalog import Action, entry, job_body, job_endpoint

Print = Callable[[str], None]
POLL_SECONDS = 0.5
MAX_POLLS = 120


def request_text(settings: Settings, method: str, path: str, body: Any) -> str:
    """A request as text (the key masked)."""
    url = settings.klaviyo_base_url.rstrip("/") + path
    shown = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    return f"{method} {url}\nAuthorization: Klaviyo-API-Key **********\n" + (
        f"revision: {settings.klaviyo_revision}\n\n{shown}"
    )


def _entry(resource: Resource, action: Action) -> dict[str, Any]:
    return entry(resource.kind, action, resource.id, resource.fields, resource.item_id,
                 resource.categories)  # fmt: skip


def body_of(resource: Resource, action: Action) -> dict[str, Any]:
    return job_body(resource.kind, action, [_entry(resource, action)])


async def run_catalog_tester(
    settings: Settings, line: dict[str, Any], *, dry_run: bool, out: Print = print
) -> int:
    """Show (and unless `dry_run` send and follow) the job a catalog record makes."""
    try:
        resource = parse(line, TYPE_NAMES[line["type"]])
    except RecordError as exc:
        out(f"refused ({exc.stage}): {exc}")
        out("the service would write this record to the dead-letter topic")
        return 1
    first: Action = "delete" if resource.deleted else "create"
    out(f"{line['type']} {resource.id} → 1 bulk job request ({first}"
        + ("" if resource.deleted else "; an update when the state store knows Klaviyo has it")
        + "), then its status, polled until complete")  # fmt: skip
    out("")
    body = body_of(resource, first)
    out(request_text(settings, "POST", job_endpoint(resource.kind, first), body))
    if dry_run:
        return 0
    require_klaviyo_credentials(settings)
    from stream.engine.pipeline import build_client

    async with build_client(settings, max_connections=1) as client:
        failed = await _send(client, resource, first, out)
        if failed and first == "create" and "exist" in failed:
            out("Klaviyo has it already: as an update")
            out(request_text(settings, "POST", job_endpoint(resource.kind, "update"),
                             body_of(resource, "update")))  # fmt: skip
            failed = await _send(client, resource, "update", out)
    return 1 if failed else 0


async def _send(client: Any, resource: Resource, action: Action, out: Print) -> str | None:
    """Send one job and follow it; the per-resource error's detail when it failed."""

    async def request(method: str, path: str, body: Any = None, *, budget: str) -> Any:
        return await client.request(method, path, body)

    encoded = [orjson.dumps(_entry(resource, action))]
    try:
        job_id = await jobs.submit(request, resource.kind, action, encoded)
        out(f"\nKlaviyo answered 202: job {job_id}")
        for _ in range(MAX_POLLS):
            await asyncio.sleep(POLL_SECONDS)
            status = await jobs.status(request, resource.kind, action, job_id, 1)
            if status.finished:
                break
        else:
            out(f"job {job_id} not complete after {MAX_POLLS * POLL_SECONDS:.0f} s")
            return "not complete"
    except KlaviyoError as exc:
        out(f"Klaviyo answered {exc.status or 'nothing'}: {exc}")
        return str(exc)
    if status.failed:
        error = status.failed[0]
        out(f"job {job_id} complete: failed: {error}")
        return str(error)
    out(f"job {job_id} complete: {action}d")
    return None
