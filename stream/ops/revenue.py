"""Klaviyo's mapped metrics: which metric it reads as revenue, ordered product and the like.

`doctor` reports whether the seven mapped metrics point at the metrics this service sends
(`Placed Order` for revenue, …); `klaviyo-stream setup-metrics [--dry-run]` points them there.
A metric exists at Klaviyo only once its first event arrived, so a mapping whose metric was
never sent is left for a later run. Klaviyo allows 30 PATCHes a day (1/s, 15/m): a run sends at
most one per mapped metric, only for those that point elsewhere, paced by the governor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

from stream.core.errors import KlaviyoError, RateLimited
from stream.klaviyo.catalog import (
    MAPPED,
    MAPPED_METRIC,
    MAPPED_METRICS,
    METRICS,
    mapped_metric_body,
)
from stream.klaviyo.client import Requester

MAX_PAGES = 50  # GET /api/metrics pages read at most (an account's metrics, 200 or so a page)


@dataclass(frozen=True, slots=True)
class Mapping:
    """One mapped metric: the metric it points at now, and the one it should (None: that
    metric was never sent, it does not exist yet)."""

    name: str
    current: str | None
    wanted: str | None
    metric: str  # the wanted metric's name

    @property
    def needed(self) -> bool:
        return self.wanted is not None and self.current != self.wanted


async def mappings(request: Requester) -> list[Mapping]:
    """The seven mapped metrics as they are, and as the service's metrics would have them."""
    found: dict[str, list[tuple[str, str]]] = {}  # name → (id, integration name)
    page: str | None = METRICS
    for _ in range(MAX_PAGES):
        if page is None:
            break
        body = (await request("GET", page, budget=METRICS)).body or {}
        for metric in body.get("data") or []:
            attributes = metric.get("attributes") or {}
            integration = (attributes.get("integration") or {}).get("name") or ""
            found.setdefault(attributes.get("name") or "", []).append((metric["id"], integration))
        nxt = (body.get("links") or {}).get("next")
        page = URL(nxt).path_qs if nxt else None
    body = (await request("GET", MAPPED_METRICS, budget=MAPPED_METRICS)).body or {}
    current: dict[str, str | None] = {}
    for mapped in body.get("data") or []:
        data = ((mapped.get("relationships") or {}).get("metric") or {}).get("data")
        current[mapped["id"]] = data.get("id") if isinstance(data, dict) else None
    out = []
    for name, metric in MAPPED.items():
        candidates = found.get(metric, [])
        ours = [mid for mid, integration in candidates if integration.lower() == "api"]
        named = ours or [mid for mid, _ in candidates]
        wanted = named[0] if named else None
        out.append(Mapping(name, current.get(name), wanted, metric))
    return out


def describe(rows: list[Mapping]) -> tuple[bool, str]:
    """(all as they should be, one line): for doctor."""
    right = [r for r in rows if r.wanted is not None and not r.needed]
    wrong = [r for r in rows if r.needed]
    unsent = [r for r in rows if r.wanted is None]
    parts = [f"{len(right)} of 7 point at our metrics"]
    if wrong:
        parts.append("elsewhere or unset: " + ", ".join(f"{r.name} (→ {r.metric})" for r in wrong))
    if unsent:
        names = ", ".join(r.metric for r in unsent)
        parts.append(f"{len(unsent)} of our metrics not sent yet ({names})")
    return not wrong, "; ".join(parts)


async def setup(
    request: Requester, dry_run: bool, say: Callable[[str], None]
) -> int:
    """Point the mapped metrics at ours; 0 when all that can be set are, 1 otherwise."""
    rows = await mappings(request)
    todo = [r for r in rows if r.needed]
    for row in rows:
        if row.wanted is None:
            say(f"- {row.name}: {row.metric} not sent yet (a metric exists once its first event"
                " arrived): left as it is")  # fmt: skip
        elif not row.needed:
            say(f"✓ {row.name}: {row.metric} ({row.wanted}) already")
        elif dry_run:
            say(f"→ {row.name}: would point at {row.metric} ({row.wanted}), now "
                f"{row.current or 'unset'}")  # fmt: skip
    if dry_run or not todo:
        say(f"{len(todo)} change(s) {'to make' if dry_run else 'needed'}; Klaviyo allows 30 a day")
        return 0
    failed = 0
    for row in todo:
        assert row.wanted is not None
        path = MAPPED_METRIC.replace("{id}", row.name)
        try:
            await request("PATCH", path, mapped_metric_body(row.name, row.wanted),
                          budget=MAPPED_METRIC)  # fmt: skip
        except RateLimited as exc:
            say(f"✗ {row.name}: Klaviyo's 30 changes a day are spent ({exc}); run again later")
            return 1
        except KlaviyoError as exc:
            say(f"✗ {row.name}: {exc}")
            failed += 1
            continue
        say(f"✓ {row.name}: now {row.metric} ({row.wanted})")
    say(f"{len(todo) - failed} of {len(todo)} changed (of Klaviyo's 30 a day)")
    return 1 if failed else 0


def client_request(client: Any) -> Requester:
    """A paced, retried requester over `client` (the governor knows the 1/s, 15/m quota) that
    gives up within 30 s: a 429 for the daily quota does not clear soon."""
    from stream.core.retry import RetryPolicy
    from stream.delivery.deliver import Deliverer
    from stream.klaviyo.governor import Governor

    return Deliverer(client, max_in_flight=1, governor=Governor(),
                     retry=RetryPolicy(max_attempts=3, max_total_seconds=30)).request  # fmt: skip
