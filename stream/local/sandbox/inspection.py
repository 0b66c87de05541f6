"""The sandbox's own endpoints under /sandbox/ (no auth, no rate limit, not logged).

They let tests and demos see what "Klaviyo" received and holds, reset it between tests, and
turn fault injection up or down and change the job delay while the service runs. The GET
endpoints answer JSON, or an HTML page of the same document when the `Accept` header prefers
`text/html` (a browser).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from . import pages
from .catalog_page import catalog_page
from .config import MAX_DELAY_SECONDS
from .consent import PENDING as CONSENT_PENDING
from .resources import event_snapshot, list_snapshot, merge_snapshot, profile_snapshot
from .stamps import iso
from .state import Sandbox
from .subscriptions import confirm as confirm_opt_in
from .tasks import APPLIED, PENDING, SKIPPED


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


def _bad(detail: str) -> web.Response:
    return _json({"errors": [{"status": 400, "code": "invalid", "detail": detail}]}, 400)


def _quality(accept: str, wanted: str) -> float:
    """How much the `Accept` header wants media type `wanted` (its best matching q)."""
    kind = wanted.split("/")[0]
    best = 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() not in (wanted, f"{kind}/*", "*/*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        exact = 0.001 if media.lower() == wanted else 0.0  # ties go to the named type
        best = max(best, q + exact if q > 0 else 0.0)
    return best


def wants_html(request: web.Request) -> bool:
    """True when the caller prefers text/html over JSON (browsers); `*/*` gets JSON."""
    accept = request.headers.get("Accept", "")
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def _answer(request: web.Request, document: Any, render: Callable[[Any], str]) -> web.Response:
    """`document` as JSON, or as the HTML page `render` makes of it for a browser."""
    if wants_html(request):
        return web.Response(text=render(document), content_type="text/html", charset="utf-8")
    return _json(document)


def routes(sandbox: Sandbox) -> list[web.RouteDef]:
    """The /sandbox/ routes bound to `sandbox`."""

    def memberships() -> dict[str, list[str]]:
        """Profile id → ids of the lists it is on."""
        found: dict[str, list[str]] = {}
        for mailing_list in sandbox.store.lists.values():
            for member in mailing_list.members:
                found.setdefault(member, []).append(mailing_list.id)
        return found

    async def profiles(request: web.Request) -> web.Response:
        """GET /sandbox/profiles: every live profile with its consent, suppressions and lists,
        and the ids merged into each."""
        on = memberships()
        counts = Counter(event.profile_id for event in sandbox.store.events)
        document = {
            "profiles": [
                {**profile_snapshot(p, on.get(p.id, [])), "event_count": counts[p.id]}
                for p in sandbox.store.profiles.values()
            ],
            "merged_into": dict(sandbox.store.merged_into),
        }
        return _answer(request, document, pages.profiles_page)

    async def one_profile(request: web.Request) -> web.Response:
        """GET /sandbox/profiles/{id}: one profile and its events, oldest first in JSON (the
        page shows the timeline newest first); a merged id redirects to its profile."""
        asked = request.match_info["id"]
        live = sandbox.store.canonical_id(asked)
        if live is None:
            gone = next((d for d in sandbox.store.deleted if d.id == asked), None)
            what = f"Profile {asked} " + ("was deleted." if gone else "does not exist.")
            if wants_html(request):
                return web.Response(
                    text=pages.not_found_page(what), status=404, content_type="text/html"
                )
            return _json({"errors": [{"status": 404, "code": "not_found", "detail": what}]}, 404)
        if live != asked:  # the query (`?account=`) goes along
            query = f"?{request.query_string}" if request.query_string else ""
            raise web.HTTPFound(f"/sandbox/profiles/{quote(live, safe='')}{query}")
        profile = sandbox.store.profiles[live]
        events = [event_snapshot(e) for e in sandbox.store.events if e.profile_id == live]
        if wants_html(request):
            events.sort(key=lambda e: (e["time"], e["received"]), reverse=True)
        document = {
            "profile": profile_snapshot(profile, memberships().get(live, [])),
            "events": events,
        }
        return _answer(request, document, pages.profile_page)

    async def lists(request: web.Request) -> web.Response:
        """GET /sandbox/lists: every list with its members and pending double opt-ins."""
        waiting: dict[str, list[str]] = {}
        for profile in sandbox.store.profiles.values():
            for consent in profile.consents.values():
                if consent.state == CONSENT_PENDING and consent.list_id:
                    ids = waiting.setdefault(consent.list_id, [])
                    if profile.id not in ids:
                        ids.append(profile.id)
        document = {
            "lists": [list_snapshot(m, waiting.get(m.id, [])) for m in sandbox.store.lists.values()]
        }
        return _answer(request, document, pages.lists_page)

    async def deleted(request: web.Request) -> web.Response:
        """GET /sandbox/deleted: profiles removed by data-privacy deletion, and every deletion
        request (pending or applied) with the profile ids it removed."""
        store = sandbox.store
        document = {
            "deleted": [asdict(d) for d in store.deleted],
            "deletions": [asdict(t) for t in store.deletion_tasks],
            "pending": sum(t.status == PENDING for t in store.deletion_tasks),
        }
        return _answer(request, document, pages.deleted_page)

    async def consent_jobs(request: web.Request) -> web.Response:
        """GET /sandbox/consent-jobs: subscribe, unsubscribe, suppress and unsuppress requests
        and what each did to every profile it named."""
        document = {"jobs": [asdict(job) for job in sandbox.store.consent_jobs]}
        return _answer(request, document, pages.consent_jobs_page)

    async def confirm(request: web.Request) -> web.Response:
        """POST /sandbox/confirm {"profile_id": ..., "channel": "email"|"sms"}: the person
        clicks the double opt-in link (or replies YES): pending consent becomes subscribed."""
        try:
            asked = orjson.loads(await request.read())
            profile_id, channel = asked["profile_id"], asked["channel"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _bad('body must be {"profile_id": "...", "channel": "email" or "sms"}')
        live = sandbox.store.canonical_id(str(profile_id))
        if live is None or channel not in ("email", "sms"):
            return _bad("unknown profile_id, or channel is not email or sms")
        now = iso(datetime.now(UTC))
        if not confirm_opt_in(sandbox.store, sandbox.store.profiles[live], channel, now):
            return _json({"errors": [{"status": 409, "detail": "nothing pending"}]}, 409)
        return _json({"confirmed": True, "profile_id": live, "channel": channel})

    async def events(request: web.Request) -> web.Response:
        """GET /sandbox/events[?profile_id=&metric=]: stored events in arrival order."""
        wanted_profile = request.query.get("profile_id")
        wanted_metric = request.query.get("metric")
        if wanted_profile:
            wanted_profile = sandbox.store.canonical_id(wanted_profile) or wanted_profile
        found = [
            event_snapshot(e)
            for e in sandbox.store.events
            if (not wanted_profile or e.profile_id == wanted_profile)
            and (not wanted_metric or e.metric == wanted_metric)
        ]
        return _answer(request, {"events": found}, pages.events_page)

    async def acceptances(request: web.Request) -> web.Response:
        """GET /sandbox/acceptances[?start=N]: `[unique_id, received]` of each stored event from
        the N-th on, in arrival order, and `next` (the N of a later call): when each event was
        accepted, cheaply enough for a benchmark to poll while hundreds of thousands arrive."""
        start = request.query.get("start", "0")
        if not start.isdigit():
            return _bad("start must be a non-negative integer")
        stored = sandbox.store.events
        found = [[e.unique_id, e.received] for e in stored[int(start) :]]
        return _json({"acceptances": found, "next": len(stored)})

    async def merges(request: web.Request) -> web.Response:
        """GET /sandbox/merges: every requested merge, oldest first, and its status."""
        tasks = sandbox.store.merge_tasks
        counts = Counter(task.status for task in tasks)
        document = {
            "merges": [merge_snapshot(task) for task in tasks],
            "pending": counts[PENDING],
            "applied": counts[APPLIED],
            "skipped": counts[SKIPPED],
        }
        return _answer(request, document, pages.merges_page)

    def stats_document() -> dict[str, Any]:
        store = sandbox.store
        operations = sandbox.operations
        return {
            "requests": {k: dict(v) for k, v in sandbox.stats.requests.items()},
            "requests_total": sandbox.log.seq,
            "refused_duplicates": store.refused_duplicates,
            "merges": store.merges,
            "pending_merges": sum(t.status == PENDING for t in store.merge_tasks),
            "throttled": sandbox.stats.throttled,
            "faults": dict(sandbox.stats.faults),
            "fault_rate": sandbox.faults.rate,
            "profiles": len(store.profiles),
            "events": len(store.events),
            "import_jobs": len(store.jobs),
            "lists": len(store.lists),
            "consent_jobs": len(store.consent_jobs),
            "deleted_profiles": len(store.deleted),
            "catalog_items": len(sandbox.catalog.resources["item"]),
            "catalog_jobs_in_progress": sandbox.catalog.in_progress,
            "pending_deletions": sum(t.status == PENDING for t in store.deletion_tasks),
            "pending_jobs": len(sandbox.job_queue.pending),
            "pending_job_kinds": sandbox.job_queue.kinds(),
            "job_delay_seconds": sandbox.job_delay,
            "rate_limits_enforced": sandbox.config.rate_limits,
            "rate_limits": [
                {
                    "operation": operation_id,
                    "endpoint": f"{operations[operation_id].method} "
                    f"{operations[operation_id].path}",
                    "windows": windows,
                }
                for operation_id, windows in sandbox.limiter.state().items()
            ],
        }

    async def stats(request: web.Request) -> web.Response:
        """GET /sandbox/stats: request counts per endpoint and status, every rate-limit window
        in use, and the other counters."""
        return _answer(request, stats_document(), pages.stats_page)

    async def overview(request: web.Request) -> web.Response:
        """GET /sandbox/: the counters (as /sandbox/stats), as a page of links for a browser."""
        return _answer(request, stats_document(), pages.overview_page)

    async def requests(request: web.Request) -> web.Response:
        """GET /sandbox/requests[?since=SEQ]: the request log, oldest first."""
        since = request.query.get("since", "0")
        if not since.isdigit():
            return _bad("since must be a non-negative integer")
        document = {
            "requests": sandbox.log.since(int(since)),
            "last_seq": sandbox.log.seq,
            "evicted": sandbox.log.evicted,
        }
        return _answer(request, document, pages.requests_page)

    async def reset(request: web.Request) -> web.Response:
        """POST /sandbox/reset: empty store, windows, counters and log; faults back to config."""
        sandbox.reset()
        return _json({"reset": True})

    async def faults(request: web.Request) -> web.Response:
        """GET or POST /sandbox/faults {"fault_rate": 0.2, "hold": true, "operations": […],
        "fail": {"<operation id>": 400}}: read or set the fault share, hold API requests
        unanswered (a slow Klaviyo; only those of the given operation ids, when named) or let
        them go, and make operations answer one status every time (`fail: {}` clears)."""
        faults = sandbox.faults
        if request.method == "POST":
            try:
                body = orjson.loads(await request.read())
                rate = body.get("fault_rate", faults.rate)
                hold = body.get("hold", faults.released is not None)
                operations = body.get("operations")
                fail = body.get("fail", faults.failing)
            except (orjson.JSONDecodeError, AttributeError):
                return _bad('body must be {"fault_rate": <0..1>, "hold": <bool>}')
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                return _bad("fault_rate must be a number from 0 to 1")
            if not isinstance(hold, bool):
                return _bad("hold must be true or false")
            if operations is not None and (
                not isinstance(operations, list)
                or not all(isinstance(o, str) and o in sandbox.operations for o in operations)
            ):
                return _bad("operations must be a list of operation ids (bulk_subscribe_profiles…)")
            if not isinstance(fail, dict) or not all(
                o in sandbox.operations and s in (400, 429, 500, 503) for o, s in fail.items()
            ):
                return _bad("fail must map operation ids to 400, 429, 500 or 503")
            faults.rate = float(rate)
            faults.hold(hold, frozenset(operations) if operations else None)
            faults.failing = dict(fail)
        held = faults.released is not None
        document: dict[str, Any] = {
            "fault_rate": faults.rate, "hold": held, "waiting": faults.waiting
        }  # fmt: skip
        if held and faults.operations is not None:
            document["operations"] = sorted(faults.operations)
        if faults.failing:
            document["fail"] = dict(faults.failing)
        return _json(document)

    async def catalog(request: web.Request) -> web.Response:
        """GET /sandbox/catalog: items, variants, categories, job counts (and the most ever in
        progress at once), back-in-stock subscriptions and mapped metrics."""
        return _answer(request, sandbox.catalog.snapshot(), catalog_page)

    async def catalog_jobs(request: web.Request) -> web.Response:
        """GET /sandbox/catalog/jobs: every catalog bulk job, oldest first, with the ids its
        request named and what it did."""
        jobs = [sandbox.catalog.job_snapshot(job) for job in sandbox.catalog.jobs.values()]
        return _json({"jobs": jobs})

    async def catalog_faults(request: web.Request) -> web.Response:
        """POST /sandbox/catalog/faults {"fail": [{"id": "SKU-1", "detail": "…", "times": 1}]}:
        the next jobs naming a resource fail it with that detail (a per-resource job error)."""
        try:
            asked = orjson.loads(await request.read())
            failures = [(str(f["id"]), str(f["detail"]), int(f.get("times", 1)))
                        for f in asked["fail"]]  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _bad('body must be {"fail": [{"id": "...", "detail": "...", "times": 1}]}')
        for resource_id, detail, times in failures:
            sandbox.catalog.fail(resource_id, detail, times)
        return _json({"failing": {k: len(v) for k, v in sandbox.catalog.failures.items()}})
    def jobs_document() -> dict[str, Any]:
        queue = sandbox.job_queue
        return {
            "job_delay_seconds": sandbox.job_delay,
            "pending": len(queue.pending),
            "pending_kinds": queue.kinds(),
            "queued": [
                {
                    "id": job.id,
                    "kind": job.kind,
                    "size": job.size,
                    "accepted_at": job.accepted_at,
                    "due_at": job.due_at,
                }
                for job in queue.pending
            ],
            "applied": dict(queue.applied),
            "failed": list(queue.failed),
        }

    async def jobs(request: web.Request) -> web.Response:
        """GET or POST /sandbox/jobs {"job_delay_seconds": 2.0, "flush": true}: the event and
        profile jobs waiting to be applied (oldest first), how many of each kind were applied,
        and the latest that failed when applied; POST sets the delay of jobs accepted from now
        on, and `flush` applies every waiting job at once, in order."""
        if request.method == "POST":
            try:
                body = orjson.loads(await request.read())
                delay = body.get("job_delay_seconds", sandbox.job_delay)
                flush = body.get("flush", False)
            except (orjson.JSONDecodeError, AttributeError):
                return _bad('body must be {"job_delay_seconds": <seconds>, "flush": <bool>}')
            if (
                isinstance(delay, bool)
                or not isinstance(delay, int | float)
                or not 0 <= delay <= MAX_DELAY_SECONDS
            ):
                return _bad(f"job_delay_seconds must be a number from 0 to {MAX_DELAY_SECONDS:g}")
            if not isinstance(flush, bool):
                return _bad("flush must be true or false")
            sandbox.job_delay = float(delay)
            if flush:
                sandbox.job_queue.flush()
            return _json(jobs_document())
        return _answer(request, jobs_document(), pages.jobs_page)

    return [
        web.get("/sandbox", overview),
        web.get("/sandbox/", overview),
        web.get("/sandbox/profiles", profiles),
        web.get("/sandbox/profiles/{id}", one_profile),
        web.get("/sandbox/events", events),
        web.get("/sandbox/acceptances", acceptances),
        web.get("/sandbox/merges", merges),
        web.get("/sandbox/lists", lists),
        web.get("/sandbox/deleted", deleted),
        web.get("/sandbox/consent-jobs", consent_jobs),
        web.get("/sandbox/catalog", catalog),
        web.get("/sandbox/catalog/jobs", catalog_jobs),
        web.post("/sandbox/catalog/faults", catalog_faults),
        web.get("/sandbox/jobs", jobs),
        web.post("/sandbox/jobs", jobs),
        web.post("/sandbox/confirm", confirm),
        web.get("/sandbox/stats", stats),
        web.get("/sandbox/requests", requests),
        web.post("/sandbox/reset", reset),
        web.get("/sandbox/faults", faults),
        web.post("/sandbox/faults", faults),
    ]
