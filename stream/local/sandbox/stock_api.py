"""Handlers of back-in-stock subscriptions, metrics and mapped metrics.

- `POST /api/back-in-stock-subscriptions` (and `/client/…` with `company_id`): a profile asks to
  be told when a catalog variant is back. The variant must exist (else a 400 naming it); each
  channel needs its identifier (EMAIL an email, SMS an E.164 phone number); the profile is found
  or made like an event's. 202, no body.
- `GET /api/metrics`: a metric exists once its first event arrived (ids are stable per name).
- `GET /api/mapped-metrics`, `PATCH /api/mapped-metrics/{id}`: which metric Klaviyo reads as
  revenue, ordered product and the like; the PATCH's 30-a-day quota is the rate limiter's.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .api import accepted, base_url, json_response, not_found, raise_errors
from .catalog import Catalog, Stock
from .errors import ApiError, ErrorItem, invalid
from .profiles import ProfileNotFound
from .stamps import iso, new_id, now_iso
from .state import Sandbox
from .validation import valid_e164, valid_email

CHANNEL_NEEDS = {"EMAIL": "email", "SMS": "phone_number"}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


async def create_back_in_stock_subscription(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """POST /api/back-in-stock-subscriptions and /client/back-in-stock-subscriptions."""
    data = body["data"]
    attrs = data["attributes"]
    variant_id = data["relationships"]["variant"]["data"]["id"]
    catalog: Catalog = sandbox.catalog
    problems: list[ErrorItem] = []
    if variant_id not in catalog.resources["variant"]:
        problems.append(
            ErrorItem(
                400, "invalid", f"Catalog variant {variant_id} does not exist.",
                pointer="/data/relationships/variant/data/id",
            )
        )  # fmt: skip
    who = (attrs.get("profile") or {}).get("data")
    if who is None:
        raise_errors(problems)
        raise invalid("A profile is required.", pointer="/data/attributes/profile")
    given = who.get("attributes") or {}
    pointer = "/data/attributes/profile/data/attributes"
    email, phone = given.get("email"), given.get("phone_number")
    if email is not None and not valid_email(email):
        problems.append(ErrorItem(400, "invalid", f"Invalid email address: {email!r}.",
                                  pointer=f"{pointer}/email"))  # fmt: skip
    if phone is not None and not valid_e164(phone):
        detail = "Invalid phone number format (Example of a valid format: +13239169023)."
        problems.append(ErrorItem(400, "invalid", detail, pointer=f"{pointer}/phone_number"))
    for channel in attrs["channels"]:
        need = CHANNEL_NEEDS.get(channel)
        if need is not None and not given.get(need) and not who.get("id"):
            detail = f"The {channel} channel needs the profile's {need}."
            problems.append(ErrorItem(400, "invalid", detail, pointer="/data/attributes/channels"))
    raise_errors(problems[:1])
    try:
        profile = sandbox.store.event_profile(who)
    except ProfileNotFound as exc:
        raise not_found(exc, "/data/attributes/profile/data/id") from exc
    catalog.stock.append(
        Stock(new_id(), profile.id, variant_id, list(attrs["channels"]), now_iso())
    )
    return accepted()


def metric_id(name: str) -> str:
    """A stable six-character id per metric name (Klaviyo's look alike)."""
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(_CROCKFORD[b % 32] for b in digest[:6])


def _metrics(sandbox: Sandbox) -> dict[str, tuple[str, str]]:
    """Metric id → (name, first seen): every metric some event was recorded under."""
    found: dict[str, tuple[str, str]] = {}
    for event in sandbox.store.events:
        mid = metric_id(event.metric)
        if mid not in found:
            found[mid] = (event.metric, event.received)
    return found


async def get_metrics(request: web.Request, sandbox: Sandbox, body: Any) -> web.StreamResponse:
    """GET /api/metrics: the account's metrics; `filter` on integration.name / .category."""
    wanted: tuple[str, str] | None = None
    text = request.query.get("filter")
    if text is not None:
        field, _, value = text.removeprefix("equals(").removesuffix(")").partition(",")
        if field not in ("integration.name", "integration.category") or not text.startswith(
            "equals("
        ):
            raise invalid("Filtering is supported on integration.name and integration.category.",
                          parameter="filter")  # fmt: skip
        wanted = (field, value.strip("'\""))
    base = base_url(request)
    data = []
    for mid, (name, first) in _metrics(sandbox).items():
        integration = {"object": "integration", "id": "0eMvjm", "name": "API", "category": "API"}
        if wanted is not None and integration[wanted[0].split(".")[1]] != wanted[1]:
            continue
        data.append(
            {
                "type": "metric",
                "id": mid,
                "attributes": {
                    "name": name,
                    "created": first,
                    "updated": first,
                    "integration": integration,
                },  # fmt: skip
                "links": {"self": f"{base}/api/metrics/{mid}/"},
            }
        )
    return json_response({"data": data, "links": {"self": str(request.url)}})


def _mapped(name: str, catalog: Catalog, base: str) -> dict[str, Any]:
    metric, updated = catalog.mapped[name]
    link = f"{base}/api/mapped-metrics/{name}"
    return {
        "type": "mapped-metric",
        "id": name,
        "attributes": {"updated": updated or iso(datetime(2020, 1, 1, tzinfo=UTC))},
        "relationships": {
            "metric": {
                "data": {"type": "metric", "id": metric} if metric is not None else None,
                "links": {"self": f"{link}/relationships/metric/", "related": f"{link}/metric/"},
            }
        },
        "links": {"self": f"{link}/"},
    }


async def get_mapped_metrics(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """GET /api/mapped-metrics: the seven mapped metrics and the metric each points at."""
    base = base_url(request)
    data = [_mapped(name, sandbox.catalog, base) for name in Catalog.MAPPED]
    return json_response({"data": data, "links": {"self": str(request.url)}})


async def update_mapped_metric(
    request: web.Request, sandbox: Sandbox, body: Any
) -> web.StreamResponse:
    """PATCH /api/mapped-metrics/{id}: point one mapped metric at an existing metric."""
    name = request.match_info["id"]
    catalog: Catalog = sandbox.catalog
    if name not in catalog.mapped:
        detail = f"Mapped metric {name} does not exist."
        raise ApiError(404, [ErrorItem(404, "not_found", detail, parameter="id")])
    data = body["data"]
    if data["id"] != name:
        raise invalid("The id in the body must match the id in the path.", pointer="/data/id")
    target = ((data.get("relationships") or {}).get("metric") or {}).get("data")
    if target is None:
        raise invalid("A metric relationship is required.", pointer="/data/relationships")
    if target["id"] not in _metrics(sandbox):
        detail = f"Metric {target['id']} does not exist."
        raise invalid(detail, pointer="/data/relationships/metric/data/id")
    catalog.mapped[name] = (target["id"], now_iso())
    return json_response({"data": _mapped(name, catalog, base_url(request))})
