"""Rate-limit governor: run each Klaviyo endpoint at its documented limit without tripping it.

Klaviyo counts every request of an account against two fixed windows per endpoint, a burst
(1 s) and a steady (60 s) one. The governor paces requests by virtual scheduling (GCRA): each
`acquire` reserves the next free send slot, `interval` apart, so waiters wake one by one at
distinct times (no thundering herd when a window opens) and every window receives at most
`headroom` of its quota. Corrections from Klaviyo's answers:

- `RateLimit-Limit` replaces the table's steady limit (an account may have other limits);
- `RateLimit-Remaining`/`RateLimit-Reset` (steady window): when other clients of the account
  spend the quota, the rest of the window is spread over what remains, and `Remaining: 0`
  blocks until the reset;
- a 429's `Retry-After` blocks the endpoint until then; the first slot after it is jittered.

Several replicas share one account's quota. This is a **documented split**, not a shared
budget: each process takes `share` (setting `KLAVIYO_RATE_SHARE`, e.g. 0.25 for 4 replicas)
of every limit, and the Remaining/Reset correction catches a split that does not add up.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from stream.klaviyo.catalog import (
    ACTIONS,
    BACK_IN_STOCK,
    CLIENT_BACK_IN_STOCK,
    KINDS,
    MAPPED_METRIC,
    MAPPED_METRICS,
    METRICS,
    READ,
    job_endpoint,
    status_budget,
)
from stream.klaviyo.client import (
    EVENTS,
    EVENTS_BULK,
    PROFILE_IMPORT,
    PROFILE_MERGE,
    PROFILES,
    PROFILES_BULK,
    PROFILES_BULK_ERRORS,
    PROFILES_BULK_JOB,
)
from stream.klaviyo.consent import (
    CLIENT_SUBSCRIPTIONS,
    DELETION,
    LIST_ADD,
    LIST_REMOVE,
    SUBSCRIBE,
    SUPPRESS,
    UNSUBSCRIBE,
    UNSUPPRESS,
)

BURST_WINDOW = 1.0
STEADY_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    """Klaviyo's per-account quota of one endpoint: requests per 1 s and per 60 s."""

    burst: int
    steady: int


# Klaviyo's documented limits (revision 2026-07-15, `x-klaviyo-ratelimit` of each operation).
KLAVIYO_LIMITS: dict[str, Limit] = {
    EVENTS_BULK: Limit(10, 150),
    EVENTS: Limit(350, 3500),
    PROFILES_BULK: Limit(10, 150),
    PROFILE_IMPORT: Limit(75, 750),
    PROFILE_MERGE: Limit(10, 150),
    PROFILES: Limit(75, 750),
    PROFILES_BULK_JOB: Limit(10, 150),
    PROFILES_BULK_ERRORS: Limit(10, 150),
    # consent, lists and deletion
    SUBSCRIBE: Limit(75, 750),
    UNSUBSCRIBE: Limit(75, 750),
    SUPPRESS: Limit(75, 750),
    UNSUPPRESS: Limit(75, 750),
    LIST_ADD: Limit(10, 150),
    LIST_REMOVE: Limit(10, 150),
    DELETION: Limit(3, 60),
    CLIENT_SUBSCRIPTIONS: Limit(350, 750),
    # catalog: every bulk job endpoint 75/s 750/m; a job's status GET 75/s 750/m for item and
    # variant creates and updates, 350/s 3,500/m for the others; read-back 350/s 3,500/m
    **{job_endpoint(kind, action): Limit(75, 750) for kind in KINDS for action in ACTIONS},
    **{
        status_budget(kind, action): (
            Limit(75, 750)
            if kind != "category" and action != "delete"
            else Limit(350, 3500)
        )
        for kind in KINDS
        for action in ACTIONS
    },
    **{path: Limit(350, 3500) for path in READ.values()},
    BACK_IN_STOCK: Limit(350, 3500),
    CLIENT_BACK_IN_STOCK: Limit(350, 3500),
    METRICS: Limit(10, 150),
    MAPPED_METRICS: Limit(3, 60),
    MAPPED_METRIC: Limit(1, 15),  # and 30 a day: `setup-metrics` sends at most 7 a run
}


@dataclass(slots=True)
class _Budget:
    """The pacing state of one endpoint (all times on the governor's clock)."""

    limit: Limit
    interval: float
    tolerance: float = 0.0
    next_at: float = 0.0
    blocked_until: float = 0.0
    stretched_until: float = 0.0
    stretched_interval: float = 0.0


class Governor:
    """Paces requests per endpoint; `acquire` before a request, `observe`/`throttled` after."""

    def __init__(
        self,
        limits: Mapping[str, Limit] | None = None,
        *,
        share: float = 1.0,
        headroom: float = 0.97,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < share <= 1 or not 0 < headroom <= 1 or time_scale <= 0:
            raise ValueError("share and headroom must be in (0, 1], time_scale > 0")
        self._limits = dict(KLAVIYO_LIMITS if limits is None else limits)
        self._share = share
        self._headroom = headroom
        self._scale = time_scale
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._budgets: dict[str, _Budget] = {}

    def set_share(self, share: float) -> None:
        """This replica's share of the account's quota changed (`KLAVIYO_RATE_SHARE=auto`: the
        group grew or shrank): every budget is paced anew."""
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        if share == self._share:
            return
        self._share = share
        for budget in self._budgets.values():
            budget.interval, budget.tolerance = self._pace(budget.limit)

    @property
    def share(self) -> float:
        return self._share

    def interval(self, endpoint: str) -> float:
        """Seconds between two requests to `endpoint` (0 for an endpoint without a limit)."""
        budget = self._budget(endpoint)
        return budget.interval if budget is not None else 0.0

    def ceiling(self, endpoint: str, seconds: float) -> float:
        """Requests Klaviyo's steady limit (times `share`) allows in `seconds`: the target."""
        limit = self._limits[endpoint]
        return limit.steady * self._share * seconds / (STEADY_WINDOW * self._scale)

    def delay(self, endpoint: str) -> float:
        """Seconds until `acquire(endpoint)` would get a slot, without reserving one: the send
        stage waits this long with its batch still open, so the request leaves fuller."""
        budget = self._budget(endpoint)
        if budget is None:
            return 0.0
        now = self._clock()
        tolerance = 0.0 if now < budget.stretched_until else budget.tolerance
        slot = max(now, budget.next_at - tolerance, budget.blocked_until)
        return max(slot - now, 0.0)

    async def acquire(self, endpoint: str) -> float:
        """Wait for this request's send slot; returns the seconds waited."""
        budget = self._budget(endpoint)
        if budget is None:
            return 0.0
        now = self._clock()
        interval, tolerance = budget.interval, budget.tolerance
        if now < budget.stretched_until:
            interval, tolerance = max(interval, budget.stretched_interval), 0.0
        slot = max(now, budget.next_at - tolerance, budget.blocked_until)
        budget.next_at = max(budget.next_at, slot) + interval
        wait = slot - now
        if wait > 0:
            await self._sleep(wait)
        return max(wait, 0.0)

    def observe(self, endpoint: str, headers: Mapping[str, str]) -> None:
        """Correct the budget from an answer's RateLimit-Limit/Remaining/Reset headers."""
        budget = self._budget(endpoint)
        if budget is None:
            return
        limit = _header(headers, "RateLimit-Limit")
        if limit is not None and limit > 0 and limit != budget.limit.steady:
            budget.limit = Limit(budget.limit.burst, limit)
            budget.interval, budget.tolerance = self._pace(budget.limit)
        remaining = _header(headers, "RateLimit-Remaining")
        reset = _header(headers, "RateLimit-Reset")
        if remaining is None or reset is None:
            return
        now = self._clock()
        if remaining <= 0:
            self._block(budget, now + max(reset, 1))
            return
        # Reset is rounded up to whole seconds: the window surely lasts `reset - 1` more. If
        # others spent the quota, spread what remains over that time (our share of it).
        stretched = max(reset - 1, 0) / (remaining * self._share)
        if stretched > budget.interval:
            budget.stretched_until = now + reset - 1
            budget.stretched_interval = stretched

    def throttled(self, endpoint: str, retry_after: float) -> None:
        """A 429: nothing goes to `endpoint` before `Retry-After` has passed."""
        budget = self._budget(endpoint)
        if budget is not None:
            self._block(budget, self._clock() + retry_after)

    def _block(self, budget: _Budget, until: float) -> None:
        # jitter the first slot so replicas blocked by the same window do not all fire at once
        until += self._jitter() * budget.interval
        if until > budget.blocked_until:
            budget.blocked_until = until
            budget.next_at = until + budget.tolerance  # no catch-up burst when it reopens

    def _budget(self, endpoint: str) -> _Budget | None:
        budget = self._budgets.get(endpoint)
        if budget is None:
            limit = self._limits.get(endpoint)
            if limit is None:
                return None
            budget = self._budgets[endpoint] = _Budget(limit, *self._pace(limit))
        return budget

    def _pace(self, limit: Limit) -> tuple[float, float]:
        """(interval, tolerance): seconds between slots, and how far a late caller may catch up.

        The tolerance lets a request whose slot passed while the event loop was busy go out
        at once instead of losing the slot; it is bounded by the headroom left in a steady
        window (at most 2 slots), so a window can never receive more than its quota.
        """
        rate = self._share * self._headroom
        steady = STEADY_WINDOW * self._scale / (limit.steady * rate)
        burst = BURST_WINDOW * self._scale / (limit.burst * rate)
        interval = max(steady, burst)
        spare = int((1 - self._headroom) * min(limit.steady, limit.burst * 60) * self._share) - 1
        return interval, interval * max(0, min(2, spare))


def _header(headers: Mapping[str, str], name: str) -> int | None:
    """An integer header, whatever its case (HTTP/2 sends lower-case names)."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
