"""HTML pages of the /sandbox/ inspection endpoints, for people (JSON stays for programs).

Each page renders the very document the JSON answer carries, server-side, without
JavaScript. Everything that comes from a request or the store is escaped: a value is text
unless it is `Html`, which only this module makes (tags it writes itself, around escaped text).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

import orjson

NAV = (
    ("/sandbox/", "Overview"),
    ("/sandbox/profiles", "Profiles"),
    ("/sandbox/events", "Events"),
    ("/sandbox/merges", "Merges"),
    ("/sandbox/lists", "Lists"),
    ("/sandbox/consent-jobs", "Consent jobs"),
    ("/sandbox/jobs", "Queued jobs"),
    ("/sandbox/deleted", "Deleted"),
    ("/sandbox/catalog", "Catalog"),
    ("/sandbox/stats", "Requests & limits"),
    ("/sandbox/requests", "Request log"),
)
EVENTS_SHOWN = 500
REQUESTS_SHOWN = 200

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#232f3e;padding:8px 16px}header a{color:#fff;margin-right:14px;
text-decoration:none}header a.on{font-weight:700;text-decoration:underline}
main{padding:12px 16px}h1{font-size:20px;margin:8px 0 12px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;margin-bottom:8px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.n{text-align:right}pre{margin:0;white-space:pre-wrap;max-width:60em}
.muted{color:#777}.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #ddd;padding:8px 12px;min-width:9em}
.tile b{display:block;font-size:22px}.ok{color:#17702f}.bad{color:#b3261e}
"""


class Html(str):
    """Markup this module wrote; every other value is escaped before it reaches a page."""


def text(value: Any) -> Html:
    """`value` as escaped text (None as a dash)."""
    if isinstance(value, Html):
        return value
    if value is None:
        return Html('<span class="muted">—</span>')
    if isinstance(value, bool):
        value = "yes" if value else "no"
    return Html(html.escape(str(value), quote=True))


def link(href: str, label: Any) -> Html:
    """An anchor; `href` is built by this module from escaped, URL-quoted parts."""
    return Html(f'<a href="{html.escape(href, quote=True)}">{text(label)}</a>')


def profile_link(profile_id: str, label: Any = None) -> Html:
    return link(f"/sandbox/profiles/{quote(profile_id, safe='')}", label or profile_id)


def code(value: Any, limit: int = 20_000) -> Html:
    """A JSON value, pretty-printed, escaped, cut after `limit` characters."""
    raw = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    if len(raw) > limit:
        raw = raw[:limit] + f"\n… ({len(raw) - limit} more characters)"
    return Html(f"<pre>{text(raw)}</pre>")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "none") -> Html:
    """A table; cells are escaped unless they are `Html`; numbers are right-aligned."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{text(c)}</td>'
            if isinstance(c, int | float) and not isinstance(c, bool)
            else f"<td>{text(c)}</td>"
            for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return Html(f'<p class="muted">{text(empty)}</p>')
    return Html(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def page(title: str, here: str, *parts: Html) -> str:
    """A whole document: navigation, a heading, then `parts`."""
    nav = "".join(
        f'<a href="{href}"{" class=on" if href == here else ""}>{text(label)}</a>'
        for href, label in NAV
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,">'  # no /favicon.ico request to count as API traffic
        f"<title>{text(title)} · Klaviyo sandbox</title><style>{_STYLE}</style></head>"
        f"<body><header><nav>{nav}</nav></header><main><h1>{text(title)}</h1>"
        f"{''.join(parts)}</main></body></html>"
    )


def heading(title: str) -> Html:
    return Html(f"<h2>{text(title)}</h2>")


def para(*parts: Any) -> Html:
    return Html(f"<p>{''.join(text(p) for p in parts)}</p>")


def _tiles(items: Sequence[tuple[str, Any, str | None]]) -> Html:
    tiles = "".join(
        f'<div class="tile" data-count="{text(label)}"><b>{text(value)}</b>'
        f"{link(href, label) if href else text(label)}</div>"
        for label, value, href in items
    )
    return Html(f'<div class="tiles">{tiles}</div>')


def overview_page(stats: dict[str, Any]) -> str:
    """GET /sandbox/: what the sandbox holds, counted, with links to each page."""
    tiles = _tiles(
        [
            ("Profiles", stats["profiles"], "/sandbox/profiles"),
            ("Events", stats["events"], "/sandbox/events"),
            ("Merges applied", stats["merges"], "/sandbox/merges"),
            ("Merges pending", stats["pending_merges"], "/sandbox/merges"),
            ("Lists", stats["lists"], "/sandbox/lists"),
            ("Consent jobs", stats["consent_jobs"], "/sandbox/consent-jobs"),
            ("Deleted profiles", stats["deleted_profiles"], "/sandbox/deleted"),
            ("Requests", stats["requests_total"], "/sandbox/stats"),
            ("Throttled (429)", stats["throttled"], "/sandbox/stats"),
            ("Refused duplicates", stats["refused_duplicates"], None),
            ("Import jobs", stats["import_jobs"], None),
            ("Catalog items", stats["catalog_items"], "/sandbox/catalog"),
            ("Catalog jobs in progress", stats["catalog_jobs_in_progress"], "/sandbox/catalog"),
            ("Jobs waiting", stats["pending_jobs"], "/sandbox/jobs"),
        ]
    )
    note = para(
        "Fault rate: ",
        stats["fault_rate"],
        "; jobs applied ",
        stats["job_delay_seconds"],
        " s after they are accepted. Every page is also JSON: ask with Accept: application/json.",
    )
    return page("Klaviyo sandbox", "/sandbox/", tiles, note)


def _consent_cell(consent: dict[str, Any]) -> Html:
    state = consent["state"]
    css = "ok" if state == "subscribed" else "bad" if state == "unsubscribed" else "muted"
    extra = " (historical)" if consent.get("historical") else ""
    return Html(f'<span class="{css}">{text(state + extra)}</span>')


def profiles_page(document: dict[str, Any]) -> str:
    """GET /sandbox/profiles: one row per live profile."""
    rows = []
    for p in document["profiles"]:
        attrs = p["attributes"]
        name = " ".join(v for v in (attrs.get("first_name"), attrs.get("last_name")) if v)
        rows.append(
            [
                profile_link(p["id"]),
                attrs.get("email"),
                attrs.get("phone_number"),
                attrs.get("external_id"),
                name or None,
                _consent_cell(p["consent"]["email.marketing"]),
                _consent_cell(p["consent"]["sms.marketing"]),
                ", ".join(p["lists"]) or None,
                p["event_count"],
                p["last_event_date"],
            ]
        )
    headers = ["id", "email", "phone", "external_id", "name", "email consent", "sms consent"]
    headers += ["lists", "events", "last event"]
    merged = table(
        ["merged id", "now part of"],
        [[k, profile_link(v)] for k, v in document["merged_into"].items()],
    )
    count = para(len(document["profiles"]), " live profiles")
    return page(
        "Profiles",
        "/sandbox/profiles",
        count,
        table(headers, rows, "no profiles yet"),
        heading("Merged ids"),
        merged,
    )


def profile_page(document: dict[str, Any]) -> str:
    """GET /sandbox/profiles/{id}: identifiers, properties, consent, lists, event timeline."""
    p = document["profile"]
    identity = table(
        ["field", "value"],
        [[k, v] for k, v in p["attributes"].items() if v is not None]
        + [["created", p["created"]], ["updated", p["updated"]]]
        + [["merged ids", ", ".join(p["merged_ids"]) or None]],
    )
    consent = table(
        ["consent", "state", "can receive", "since", "consented at", "method", "source", "list"],
        [
            [
                topic,
                _consent_cell(c),
                p["can_receive"].get(topic),
                c["updated_at"],
                c["consented_at"],
                c["method"],
                c["custom_source"],
                c["list_id"],
            ]
            for topic, c in p["consent"].items()
        ],
    )
    suppressions = table(
        ["suppression", "list", "since"],
        [[s["reason"], s["list_id"], s["timestamp"]] for s in p["suppressions"]],
        "no suppressions",
    )
    timeline = table(
        ["time", "metric", "value", "unique_id", "backfill", "received", "properties"],
        [
            [
                e["time"],
                e["metric"],
                None if e["value"] is None else f"{e['value']} {e['value_currency'] or ''}".strip(),
                e["unique_id"],
                e["backfill"],
                e["received"],
                code(e["properties"]) if e["properties"] else None,
            ]
            for e in document["events"]
        ],
        "no events",
    )
    return page(
        f"Profile {p['id']}",
        "/sandbox/profiles",
        heading("Identifiers and attributes"),
        identity,
        heading("Properties"),
        code(p["properties"]) if p["properties"] else para("none"),
        heading("Location"),
        code(p["location"]) if p["location"] else para("none"),
        heading("Consent"),
        consent,
        suppressions,
        heading("Lists"),
        para(", ".join(p["lists"]) or "on no list"),
        heading(f"Event timeline ({len(document['events'])}, newest first)"),
        timeline,
    )


def events_page(document: dict[str, Any]) -> str:
    """GET /sandbox/events: the newest events first (at most EVENTS_SHOWN)."""
    events = document["events"]
    shown = list(reversed(events[-EVENTS_SHOWN:]))
    rows = [
        [e["received"], e["time"], e["metric"], profile_link(e["profile_id"]), e["value"]]
        + [e["unique_id"], e["backfill"]]
        for e in shown
    ]
    headers = ["received", "time", "metric", "profile", "value", "unique_id", "backfill"]
    return page(
        "Events",
        "/sandbox/events",
        para(len(events), " events", f", the newest {len(shown)} shown" if shown else ""),
        table(headers, rows, "no events yet"),
    )


def merges_page(document: dict[str, Any]) -> str:
    """GET /sandbox/merges: every requested merge and what became of it."""
    rows = [
        [
            m["requested_at"],
            profile_link(m["source_id"], m["source_id"]),
            profile_link(m["destination_id"]),
            m["status"],
            m["due_at"],
            m["applied_at"],
            m["note"],
        ]
        for m in document["merges"]
    ]
    summary = para(
        document["pending"],
        " pending, ",
        document["applied"],
        " applied, ",
        document["skipped"],
        " skipped",
    )
    headers = ["requested", "source", "destination", "status", "due", "done", "note"]
    return page("Merges", "/sandbox/merges", summary, table(headers, rows, "no merges"))


def lists_page(document: dict[str, Any]) -> str:
    """GET /sandbox/lists: lists, members and pending double opt-ins."""
    parts: list[Html] = []
    for m in document["lists"]:
        parts.append(heading(f"{m['name']} ({m['id']}, {m['opt_in_process']})"))
        parts.append(
            para(len(m["members"]), " members, ", len(m["pending"]), " awaiting confirmation")
        )
        parts.append(
            table(
                ["member", "status"],
                [[profile_link(i), "member"] for i in m["members"]]
                + [[profile_link(i), "pending double opt-in"] for i in m["pending"]],
                "nobody",
            )
        )
    return page("Lists", "/sandbox/lists", *(parts or [para("no lists")]))


def deleted_page(document: dict[str, Any]) -> str:
    """GET /sandbox/deleted: data-privacy deletions and the profiles they removed."""
    deleted = table(
        ["profile", "email", "phone", "external_id", "events deleted", "deleted at"],
        [
            [
                d["id"],
                d["identifiers"].get("email"),
                d["identifiers"].get("phone_number"),
                d["identifiers"].get("external_id"),
                d["events_deleted"],
                d["deleted_at"],
            ]
            for d in document["deleted"]
        ],
        "nobody deleted",
    )
    requests = table(
        ["requested", "by", "value", "status", "due", "profiles deleted"],
        [
            [t["requested_at"], t["kind"], t["value"], t["status"], t["due_at"]]
            + [", ".join(t["deleted_ids"]) or None]
            for t in document["deletions"]
        ],
        "no deletion requests",
    )
    return page(
        "Deleted profiles",
        "/sandbox/deleted",
        deleted,
        heading("Deletion requests"),
        requests,
    )


def consent_jobs_page(document: dict[str, Any]) -> str:
    """GET /sandbox/consent-jobs: consent and suppression requests, per profile."""
    rows = [
        [job["created_at"], job["kind"], job["list_id"], job["historical"], r["index"]]
        + [profile_link(r["profile_id"]) if r["profile_id"] else None, r["result"]]
        for job in document["jobs"]
        for r in job["results"]
    ]
    headers = ["requested", "kind", "list", "historical", "entry", "profile", "result"]
    return page(
        "Consent jobs", "/sandbox/consent-jobs", table(headers, rows, "no consent requests")
    )


def jobs_page(document: dict[str, Any]) -> str:
    """GET /sandbox/jobs: event and profile jobs waiting to be applied, and failed ones."""
    queued = table(
        ["accepted", "kind", "size", "due"],
        [[j["accepted_at"], j["kind"], j["size"], j["due_at"]] for j in document["queued"]],
        "nothing waiting",
    )
    failed = table(
        ["accepted", "kind", "failed", "reason"],
        [[f["accepted_at"], f["kind"], f["failed_at"], f["reason"]] for f in document["failed"]],
        "none failed",
    )
    applied = ", ".join(f"{kind}: {n}" for kind, n in sorted(document["applied"].items()))
    return page(
        "Queued jobs",
        "/sandbox/jobs",
        para(
            "Applied ",
            document["job_delay_seconds"],
            " s after they are accepted, in order. Applied so far: ",
            applied or "none",
        ),
        queued,
        heading("Failed when applied"),
        failed,
    )


def stats_page(document: dict[str, Any]) -> str:
    """GET /sandbox/stats: requests per endpoint by status, and each rate limit's state."""
    endpoints = table(
        ["endpoint", "requests", "by status"],
        [
            [
                endpoint,
                sum(counts.values()),
                ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())),
            ]
            for endpoint, counts in sorted(document["requests"].items())
        ],
        "no API requests yet",
    )
    limits = table(
        ["endpoint", "window", "used", "limit", "remaining", "resets in (s)"],
        [
            [r["endpoint"], w["window"], w["used"], w["limit"], w["limit"] - w["used"]]
            + [w["resets_in"]]
            for r in document["rate_limits"]
            for w in r["windows"]
        ],
        "no rate-limited endpoint called yet",
    )
    enforced = "enforced" if document["rate_limits_enforced"] else "counted only (not enforced)"
    return page(
        "Requests and rate limits",
        "/sandbox/stats",
        para(document["requests_total"], " requests; ", document["throttled"], " throttled"),
        heading("Requests per endpoint"),
        endpoints,
        heading(f"Rate-limit windows ({enforced})"),
        limits,
    )


def requests_page(document: dict[str, Any]) -> str:
    """GET /sandbox/requests: the request log, newest first (at most REQUESTS_SHOWN)."""
    entries = document["requests"]
    shown = list(reversed(entries[-REQUESTS_SHOWN:]))
    rows = [
        [r["seq"], r["time"], r["method"], r["path"], r["status"], r["fault"]]
        + [
            Html(f"<details><summary>body</summary>{code(r['body'], 2_000)}</details>")
            if r["body"] is not None
            else None
        ]
        for r in shown
    ]
    return page(
        "Request log",
        "/sandbox/requests",
        para(document["last_seq"], " requests, the newest ", len(shown), " shown"),
        table(["#", "time", "method", "path", "status", "fault", "body"], rows, "no requests"),
    )


def not_found_page(what: str) -> str:
    return page("Not found", "", para(what))
