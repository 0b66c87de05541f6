"""Handlers of Klaviyo's list endpoints: create, read, and membership.

List membership is not consent: adding a profile to a double opt-in list here adds it at once
and changes no consent (Klaviyo's "Add Profiles to List"; subscribing is another endpoint).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .api import base_url, bulk_errors, json_response
from .consent import MailingList
from .errors import ApiError, ErrorItem, invalid
from .filters import FilterSyntaxError, parse_filter
from .profile_api import page_links
from .stamps import iso
from .state import Sandbox
from .subscriptions import add_members, new_list, remove_members
from .validation import Path

MAX_LIST_PROFILES = 1_000
MAX_LISTS_PAGE = 10


def list_resource(mailing_list: MailingList, base: str) -> dict[str, Any]:
    """A list the way POST and GET /api/lists return it."""
    link = f"{base}/api/lists/{mailing_list.id}"
    return {
        "type": "list",
        "id": mailing_list.id,
        "attributes": {
            "name": mailing_list.name,
            "created": mailing_list.created,
            "updated": mailing_list.updated,
            "opt_in_process": mailing_list.opt_in_process,
        },
        "relationships": {
            "profiles": {
                "links": {
                    "self": f"{link}/relationships/profiles/",
                    "related": f"{link}/profiles/",
                }
            },
        },
        "links": {"self": f"{link}/"},
    }


async def create_list(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """POST /api/lists: a new list (opt-in process: given, else the account default); 201."""
    attrs = body["data"]["attributes"]
    name = attrs["name"]
    if not name.strip():
        raise invalid("A list name must not be blank.", pointer="/data/attributes/name")
    process = attrs.get("opt_in_process") or sandbox.config.default_opt_in_process
    created = new_list(sandbox.store, name, process, iso(datetime.now(UTC)))
    return json_response({"data": list_resource(created, base_url(request))}, 201)


def _list_matches(mailing_list: MailingList, operator: str, field: str, value: Any) -> bool:
    if field in ("id", "name") and operator in ("equals", "any"):
        wanted = value if operator == "any" else [value]
        if isinstance(wanted, list) and all(isinstance(v, str) for v in wanted):
            return getattr(mailing_list, field) in wanted
    if (
        field in ("created", "updated")
        and operator == "greater-than"
        and isinstance(value, datetime)
    ):
        return datetime.fromisoformat(getattr(mailing_list, field)) > value
    raise invalid(f"Filter {operator}({field},…) is not supported here.", parameter="filter")


async def get_lists(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """GET /api/lists: the account's lists, at most 10 a page, optionally filtered."""
    raw_size = request.query.get("page[size]", str(MAX_LISTS_PAGE))
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= MAX_LISTS_PAGE:
        raise invalid("page[size] must be an integer from 1 to 10.", parameter="page[size]")
    cursor = request.query.get("page[cursor]", "0")
    if not cursor.isdigit():
        raise invalid("Invalid page cursor.", parameter="page[cursor]")
    lists = list(sandbox.store.lists.values())
    text = request.query.get("filter")
    if text is not None:
        try:
            conditions = parse_filter(text)
        except FilterSyntaxError as exc:
            raise invalid(f"Invalid filter: {exc}.", parameter="filter") from exc
        lists = [
            m
            for m in lists
            if all(_list_matches(m, c.operator, c.field, c.value) for c in conditions)
        ]
    offset, size = int(cursor), int(raw_size)
    base = base_url(request)
    document = {
        "data": [list_resource(m, base) for m in lists[offset : offset + size]],
        "links": page_links(request, offset, size, len(lists)),
    }
    return json_response(document)


def _membership(request: web.Request, sandbox: Sandbox, body: Any) -> tuple[MailingList, list[str]]:
    """The list of the path and the live ids of the body's profiles; 404 for any unknown one."""
    list_id = request.match_info["id"]
    mailing_list = sandbox.store.lists.get(list_id)
    if mailing_list is None:
        item = ErrorItem(404, "not_found", f"List {list_id} does not exist.", parameter="id")
        raise ApiError(404, [item])
    entries = body["data"]
    if len(entries) > MAX_LIST_PROFILES:
        detail = f"At most {MAX_LIST_PROFILES} profiles per request; got {len(entries)}."
        raise invalid(detail, pointer="/data")
    indexed: list[tuple[Path, Any]] = [(("data", i), entry) for i, entry in enumerate(entries)]
    bulk_errors(request, indexed, lambda clean: [], body)  # one schema error per bad entry
    ids: list[str] = []
    missing: list[ErrorItem] = []
    for index, entry in enumerate(entries):
        live = sandbox.store.canonical_id(entry["id"])
        if live is None:
            detail = f"Profile {entry['id']} does not exist."
            missing.append(ErrorItem(404, "not_found", detail, pointer=f"/data/{index}/id"))
        elif live not in ids:
            ids.append(live)
    if missing:
        raise ApiError(404, missing)
    return mailing_list, ids


async def add_profiles_to_list(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/lists/{id}/relationships/profiles: add members (≤ 1,000 ids); 204."""
    mailing_list, ids = _membership(request, sandbox, body)
    add_members(mailing_list, ids, iso(datetime.now(UTC)))
    return web.Response(status=204)


async def remove_profiles_from_list(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """DELETE /api/lists/{id}/relationships/profiles: remove members (≤ 1,000 ids); 204."""
    mailing_list, ids = _membership(request, sandbox, body)
    remove_members(mailing_list, ids, iso(datetime.now(UTC)))
    return web.Response(status=204)
