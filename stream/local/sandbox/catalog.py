"""The sandbox account's catalog: items, variants, categories, and the bulk jobs that change them.

A bulk create, update or delete request is validated at once (a 400 names the bad entry) and
becomes a job, answered 202 while `queued`; it turns `processing` a quarter of its duration
later and is applied, all of it in one step, when its duration is over (`complete`). Each
resource of a job succeeds or fails on its own: a failure is one entry of the job's `errors`,
whose `source.pointer` names the resource (`/data/attributes/items/data/<i>`), and counts in
`failed_count`.

Which request is refused is the sandbox's model of Klaviyo's guides (the OpenAPI slices do not
say): a create refuses an id that exists, an update or a delete an id that does not; a variant
needs its item, and an item or a category names only categories or items that exist. Deleting
an item deletes its variants. Jobs are independent of each other: a short job submitted later
may complete before a long one submitted earlier.

Job duration model: `(catalog_job_seconds + catalog_job_seconds_per_resource × resources) ×
time_scale`. At most `catalog_jobs_cap` (500) jobs are queued or processing at once; a request
beyond that is refused with a 429 whose Retry-After is the time until the next job completes.
Tests inject per-resource failures (`fail`), which the next job naming the resource reports.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .stamps import iso, new_id, now_iso

PREFIX = "$custom:::$default:::"
KINDS = ("item", "variant", "category")
ACTIONS = ("create", "update", "delete")
# the request's attribute holding a job's resources, and Klaviyo's resource type, per kind
ENTRIES = {"item": "items", "variant": "variants", "category": "categories"}
TYPES = {"item": "catalog-item", "variant": "catalog-variant", "category": "catalog-category"}
NOUNS = {"item": "Catalog item", "variant": "Catalog variant", "category": "Catalog category"}
MAX_PER_JOB = 100
IN_PROGRESS = ("queued", "processing")
JOB_LIFETIME = timedelta(days=7)  # `expires_at`: how long Klaviyo keeps a finished job


def entry_id(action: str, entry: dict[str, Any]) -> str:
    """The resource id a job entry names (a create names its `external_id`)."""
    if action == "create":
        return PREFIX + str(entry["attributes"]["external_id"])
    return str(entry["id"])


def job_type(kind: str, action: str) -> str:
    """`catalog-item-bulk-create-job` and the like."""
    return f"{TYPES[kind]}-bulk-{action}-job"


@dataclass(slots=True)
class Resource:
    """One catalog resource as the account holds it."""

    kind: str
    id: str
    attributes: dict[str, Any]
    created: str
    updated: str
    item_id: str | None = None  # a variant's item
    related: list[str] = field(default_factory=list)  # an item's categories


@dataclass(slots=True)
class Job:
    """One bulk job: its request's entries until applied, then the outcome per resource."""

    id: str
    kind: str
    action: str
    entries: list[dict[str, Any]]
    created_at: str
    seconds: float  # its duration (time-scaled)
    requested: list[str] = field(default_factory=list)  # the ids its request named, in order
    due: float = 0.0  # when it completes, on the event loop's clock
    status: str = "queued"
    completed_at: str | None = None
    expires_at: str | None = None
    completed_count: int = 0
    failed_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    resource_ids: list[str] = field(default_factory=list)

    @property
    def total_count(self) -> int:
        return len(self.entries)


@dataclass(slots=True)
class Stock:
    """One back-in-stock subscription: who, which variant, on which channels."""

    id: str
    profile_id: str
    variant_id: str
    channels: list[str]
    created: str


class Catalog:
    """Resources per kind, every job, injected failures, back-in-stock subscriptions, and the
    seven mapped metrics (revenue and the like: which metric Klaviyo reads for each)."""

    MAPPED = (
        "added_to_cart", "cancelled_sales", "ordered_product", "refunded_sales", "revenue",
        "started_checkout", "viewed_product",
    )  # fmt: skip

    def __init__(self, cap: int = 500) -> None:
        self.cap = cap
        self.resources: dict[str, dict[str, Resource]] = {kind: {} for kind in KINDS}
        self.jobs: dict[str, Job] = {}
        self.failures: dict[str, list[str]] = {}  # resource id -> details of injected failures
        self.stock: list[Stock] = []
        self.mapped: dict[str, tuple[str | None, str]] = dict.fromkeys(self.MAPPED, (None, ""))
        self.in_progress = 0
        self.most_in_progress = 0  # the high-water mark, for tests and benchmarks
        self.refused_over_cap = 0

    # jobs -------------------------------------------------------------------------------------

    def submit(self, kind: str, action: str, entries: list[dict[str, Any]], seconds: float) -> Job:
        """A new queued job (the caller checked the cap and the entries)."""
        job = Job(new_id(), kind, action, entries, now_iso(), seconds)
        job.requested = [entry_id(action, entry) for entry in entries]
        self.jobs[job.id] = job
        self.in_progress += 1
        self.most_in_progress = max(self.most_in_progress, self.in_progress)
        return job

    def start(self, job: Job) -> None:
        """queued → processing."""
        if job.status == "queued":
            job.status = "processing"

    def complete(self, job: Job) -> None:
        """Apply every entry of the job, in order, each on its own; the job is complete."""
        if job.status not in IN_PROGRESS:
            return
        root = f"/data/attributes/{ENTRIES[job.kind]}/data"
        for index, entry in enumerate(job.entries):
            problem = self._apply(job, entry)
            if problem is None:
                job.completed_count += 1
                continue
            where, code, detail = problem
            job.failed_count += 1
            job.errors.append(
                {
                    "id": str(uuid.uuid4()),
                    "code": code,
                    "title": "Not found." if code == "not_found" else "Invalid input.",
                    "detail": detail,
                    "source": {"pointer": f"{root}/{index}{where}"},
                }
            )
        job.entries = []
        job.status = "complete"
        finished = datetime.now(UTC)
        job.completed_at = iso(finished)
        job.expires_at = iso(finished + JOB_LIFETIME)
        self.in_progress -= 1

    def retry_after(self, now: float) -> int:
        """Whole seconds until the next job in progress completes (loop time `now`), >= 1."""
        due = (job.due for job in self.jobs.values() if job.status in IN_PROGRESS)
        return max(1, math.ceil(min(due, default=now + 1) - now))

    def _apply(self, job: Job, entry: dict[str, Any]) -> tuple[str, str, str] | None:
        """Apply one entry; (pointer suffix, code, detail) when it fails."""
        kind, action = job.kind, job.action
        held = self.resources[kind]
        rid = entry_id(action, entry)
        noun = NOUNS[kind]
        failures = self.failures.get(rid)
        if failures:
            detail = failures.pop(0)
            if not failures:
                del self.failures[rid]
            return "", "invalid", detail
        if action == "delete":
            if rid not in held:
                return "/id", "not_found", f"{noun} {rid} does not exist."
            self._delete(kind, rid)
            job.resource_ids.append(rid)
            return None
        if action == "create" and rid in held:
            return "/attributes/external_id", "invalid", f"{noun} {rid} already exists."
        if action == "update" and rid not in held:
            return "/id", "not_found", f"{noun} {rid} does not exist."
        missing = self._missing_related(kind, entry)
        if missing is not None:
            return missing
        attributes = {
            key: value
            for key, value in (entry.get("attributes") or {}).items()
            if key not in ("external_id", "integration_type", "catalog_type")
        }
        now = now_iso()
        if action == "create":
            resource = Resource(kind, rid, {"external_id": rid[len(PREFIX) :]}, now, now)
            held[rid] = resource
            if kind == "variant":
                resource.item_id = entry["relationships"]["item"]["data"]["id"]
        else:
            resource = held[rid]
            resource.updated = now
        resource.attributes.update(attributes)
        relationships = entry.get("relationships") or {}
        if kind == "item" and "categories" in relationships:
            resource.related = [r["id"] for r in relationships["categories"]["data"]]
        if kind == "category" and "items" in relationships:
            for item_id in (r["id"] for r in relationships["items"]["data"]):
                item = self.resources["item"][item_id]
                if rid not in item.related:
                    item.related.append(rid)
        job.resource_ids.append(rid)
        return None

    def _missing_related(self, kind: str, entry: dict[str, Any]) -> tuple[str, str, str] | None:
        """A related resource the entry names that does not exist, as a failure."""
        relationships = entry.get("relationships") or {}
        if kind == "variant" and "item" in relationships:
            item_id = relationships["item"]["data"]["id"]
            if item_id not in self.resources["item"]:
                where = "/relationships/item/data/id"
                return where, "not_found", f"Catalog item {item_id} does not exist."
        named = {"item": ("categories", "category"), "category": ("items", "item")}.get(kind)
        if named is not None and named[0] in relationships:
            for j, ref in enumerate(relationships[named[0]]["data"]):
                if ref["id"] not in self.resources[named[1]]:
                    where = f"/relationships/{named[0]}/data/{j}/id"
                    return where, "not_found", f"{NOUNS[named[1]]} {ref['id']} does not exist."
        return None

    def _delete(self, kind: str, rid: str) -> None:
        del self.resources[kind][rid]
        if kind == "item":  # its variants go with it
            variants = self.resources["variant"]
            for variant_id in [v.id for v in variants.values() if v.item_id == rid]:
                del variants[variant_id]
        elif kind == "category":
            for item in self.resources["item"].values():
                if rid in item.related:
                    item.related.remove(rid)

    def fail(self, resource_id: str, detail: str, times: int = 1) -> None:
        """The next `times` jobs naming `resource_id` fail it with `detail` (tests)."""
        if not resource_id.startswith(PREFIX):
            resource_id = PREFIX + resource_id
        self.failures.setdefault(resource_id, []).extend([detail] * times)

    # read-back --------------------------------------------------------------------------------

    def resource(self, resource: Resource, base: str) -> dict[str, Any]:
        """A resource the way GET /api/catalog-items (variants, categories) returns it."""
        attributes = dict(resource.attributes)
        attributes["updated"] = resource.updated
        if resource.kind != "category":
            attributes["created"] = resource.created
        path = {"item": "catalog-items", "variant": "catalog-variants",
                "category": "catalog-categories"}[resource.kind]  # fmt: skip
        out: dict[str, Any] = {
            "type": TYPES[resource.kind],
            "id": resource.id,
            "attributes": attributes,
            "links": {"self": f"{base}/api/{path}/{resource.id}/"},
        }
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the catalog holds (GET /sandbox/catalog)."""

        def shown(resource: Resource) -> dict[str, Any]:
            out: dict[str, Any] = {"id": resource.id, **resource.attributes}
            out["created"], out["updated"] = resource.created, resource.updated
            if resource.kind == "variant":
                out["item"] = resource.item_id
            if resource.kind == "item":
                out["categories"] = list(resource.related)
            return out

        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job.status] = counts.get(job.status, 0) + 1
        return {
            "items": [shown(r) for r in self.resources["item"].values()],
            "variants": [shown(r) for r in self.resources["variant"].values()],
            "categories": [shown(r) for r in self.resources["category"].values()],
            "jobs": counts,
            "in_progress": self.in_progress,
            "most_in_progress": self.most_in_progress,
            "refused_over_cap": self.refused_over_cap,
            "back_in_stock": [
                {
                    "id": s.id,
                    "profile_id": s.profile_id,
                    "variant": s.variant_id,
                    "channels": s.channels,
                    "created": s.created,
                }
                for s in self.stock
            ],  # fmt: skip
            "mapped_metrics": {name: metric for name, (metric, _) in self.mapped.items()},
        }

    def job_snapshot(self, job: Job) -> dict[str, Any]:
        """One job as GET /sandbox/catalog/jobs lists it."""
        return {
            "id": job.id,
            "kind": job.kind,
            "action": job.action,
            "status": job.status,
            "total": job.total_count,
            "completed": job.completed_count,
            "failed": job.failed_count,
            "created_at": job.created_at,
            "completed_at": job.completed_at,
            "requested": list(job.requested),
            "resources": list(job.resource_ids),
            "errors": [e["detail"] for e in job.errors],
        }
