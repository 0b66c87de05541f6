"""Klaviyo's catalog requests: endpoints (rate-limit budgets), ids and job bodies.

- bulk jobs `POST /api/catalog-{item,variant,category}-bulk-{create,update,delete}-jobs`: at
  most 100 resources and 5 MB per request (75/s, 750/m each), answered 202 with a job;
- job status `GET /api/catalog-<kind>-bulk-<action>-jobs/{job_id}`: `status` (queued,
  processing, complete, cancelled) and per-resource `errors` whose pointer names the entry;
- read-back `GET /api/catalog-items` (`-variants`, `-categories`) with `filter=any(ids,[…])`;
- back in stock `POST /api/back-in-stock-subscriptions` (`/client/…` in client mode);
- mapped metrics `GET /api/mapped-metrics`, `PATCH /api/mapped-metrics/{id}`; `GET /api/metrics`.

A custom integration's catalog id is `$custom:::$default:::<your id>`. A create names the
resource by `external_id`; an update or a delete by that full id. In an update `null` clears a
field: a topic's row is the resource's whole state, so every field is sent, null included. A
create leaves out what is null (Klaviyo's defaults apply). An item's categories travel in its
`categories` relationship (one request for the item and its links, instead of one
`add_items_to_catalog_category` call per category); a variant names its item.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

from stream.klaviyo.merge import filter_value

Kind = Literal["item", "variant", "category"]
Action = Literal["create", "update", "delete"]
KINDS: tuple[Kind, ...] = ("item", "variant", "category")
ACTIONS: tuple[Action, ...] = ("create", "update", "delete")
PREFIX = "$custom:::$default:::"
MAX_PER_JOB = 100
MAX_JOB_BYTES = 5 * 1024 * 1024
MAX_JOBS_IN_PROGRESS = 500  # per account, every replica and integration together
ENTRIES: dict[Kind, str] = {"item": "items", "variant": "variants", "category": "categories"}
TYPES: dict[Kind, str] = {
    "item": "catalog-item", "variant": "catalog-variant", "category": "catalog-category"
}  # fmt: skip
READ: dict[Kind, str] = {
    "item": "/api/catalog-items",
    "variant": "/api/catalog-variants",
    "category": "/api/catalog-categories",
}
BACK_IN_STOCK = "/api/back-in-stock-subscriptions"
CLIENT_BACK_IN_STOCK = "/client/back-in-stock-subscriptions"
MAPPED_METRICS = "/api/mapped-metrics"
MAPPED_METRIC = "/api/mapped-metrics/{id}"  # PATCH; 1/s, 15/m, 30 a day
METRICS = "/api/metrics"
# the seven metrics Klaviyo reads revenue and the like from, and the metric each should be
# (as the service names them: Segment's ecommerce v2 events as Klaviyo's standard metrics)
MAPPED: dict[str, str] = {
    "added_to_cart": "Added to Cart",
    "cancelled_sales": "Cancelled Order",
    "ordered_product": "Ordered Product",
    "refunded_sales": "Refunded Order",
    "revenue": "Placed Order",
    "started_checkout": "Started Checkout",
    "viewed_product": "Viewed Product",
}


def job_endpoint(kind: Kind, action: Action) -> str:
    """`/api/catalog-item-bulk-create-jobs` and the like (also its rate-limit budget)."""
    return f"/api/catalog-{kind}-bulk-{action}-jobs"


def status_budget(kind: Kind, action: Action) -> str:
    """The budget of a job's status GET: its path pattern."""
    return job_endpoint(kind, action) + "/{job_id}"


def status_path(kind: Kind, action: Action, job_id: str) -> str:
    """`GET` path of one job."""
    return f"{job_endpoint(kind, action)}/{quote(job_id, safe='')}"


def catalog_id(external_id: str) -> str:
    """`SKU-1` → `$custom:::$default:::SKU-1`."""
    return PREFIX + external_id


def external_id(klaviyo_id: str) -> str:
    """`$custom:::$default:::SKU-1` → `SKU-1` (an id of another integration stays whole)."""
    return klaviyo_id.removeprefix(PREFIX)


def entry(
    kind: Kind,
    action: Action,
    resource_id: str,
    fields: dict[str, Any] | None = None,
    item_id: str | None = None,
    categories: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One resource of a bulk job: `fields` are Klaviyo's attribute names."""
    if action == "delete":
        return {"type": TYPES[kind], "id": catalog_id(resource_id)}
    fields = fields or {}
    out: dict[str, Any] = {"type": TYPES[kind]}
    if action == "create":
        attributes = {"external_id": resource_id}
        attributes.update((k, v) for k, v in fields.items() if v is not None)
        out["attributes"] = attributes
    else:
        out["id"] = catalog_id(resource_id)
        out["attributes"] = dict(fields)
    if kind == "variant" and action == "create" and item_id is not None:
        out["relationships"] = {"item": {"data": {"type": "catalog-item",
                                                  "id": catalog_id(item_id)}}}  # fmt: skip
    if kind == "item" and (categories or action == "update"):
        links = [{"type": "catalog-category", "id": catalog_id(c)} for c in categories]
        out["relationships"] = {"categories": {"data": links}}
    return out


def job_body(kind: Kind, action: Action, entries: list[Any]) -> dict[str, Any]:
    """Body of a bulk job over `entries` (dicts, or orjson fragments of them)."""
    return {
        "data": {
            "type": f"{TYPES[kind]}-bulk-{action}-job",
            "attributes": {ENTRIES[kind]: {"data": entries}},
        }
    }


def ids_filter(resource_ids: list[str]) -> str:
    """`any(ids,["$custom:::$default:::A",…])` for a read-back of these resources."""
    return "any(ids,[" + ",".join(filter_value(catalog_id(r)) for r in resource_ids) + "])"


def back_in_stock_body(
    profile: dict[str, Any], variant_id: str, channels: tuple[str, ...]
) -> dict[str, Any]:
    """`POST /api/back-in-stock-subscriptions`: a profile (its identifiers) asks to hear when
    a variant is back, on these channels (EMAIL, SMS)."""
    return {
        "data": {
            "type": "back-in-stock-subscription",
            "attributes": {
                "channels": list(channels),
                "profile": {"data": {"type": "profile", "attributes": profile}},
            },
            "relationships": {
                "variant": {"data": {"type": "catalog-variant", "id": catalog_id(variant_id)}}
            },
        }
    }


def mapped_metric_body(name: str, metric_id: str) -> dict[str, Any]:
    """`PATCH /api/mapped-metrics/{name}`: point it at metric `metric_id`."""
    return {
        "data": {
            "type": "mapped-metric",
            "id": name,
            "relationships": {"metric": {"data": {"type": "metric", "id": metric_id}}},
        }
    }
