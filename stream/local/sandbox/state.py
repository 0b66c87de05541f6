"""What one running sandbox holds besides its data: counters, the request log, fault dice."""

from __future__ import annotations

import asyncio
import hmac
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from .catalog import Catalog
from .config import SandboxAccount, SandboxConfig
from .consent import MailingList
from .ratelimit import RateLimiter
from .spec import Operation, load_operations
from .stamps import iso
from .store import Store
from .tasks import DeletionTask, JobQueue, MergeTask, QueuedJob, Scheduler

FAULT_KINDS = ("500", "503", "429", "drop", "drop_after")
_FAULT_WEIGHTS = (1.0, 1.0, 1.0, 0.5, 0.5)


class FaultInjector:
    """Decides which API requests fail instead of being served, and how.

    The mix is 500, 503, 429 (with Retry-After) and dropped connections: `drop` closes the
    connection before the request is applied, `drop_after` applies it and then loses the
    answer (the case only `unique_id` makes safe to retry). `hold` makes Klaviyo slow at will:
    while it is on, API requests wait unanswered (counted in `waiting`) until it is turned off;
    `operations` (operation ids) limits it to those endpoints, the others answer as usual.
    `failing` makes chosen operations answer one status (400, 429, 500, 503) until cleared.
    """

    def __init__(self, rate: float, seed: int | None = None) -> None:
        self.rate = rate
        self._random = random.Random(seed)
        self.released: asyncio.Event | None = None  # None: nothing held
        self.operations: frozenset[str] | None = None  # held operations (None: all of them)
        self.waiting = 0
        self.failing: dict[str, int] = {}  # operation id -> the status it answers, every time

    def hold(self, on: bool, operations: frozenset[str] | None = None) -> None:
        """Start holding API requests (of `operations` only, when given), or let every held
        one go."""
        if on and self.released is None:
            self.released = asyncio.Event()
        elif not on and self.released is not None:
            self.released.set()
            self.released = None
        self.operations = operations if on else None

    def holds(self, operation: str) -> bool:
        """Whether a request of `operation` waits now."""
        return self.released is not None and (
            self.operations is None or operation in self.operations
        )

    async def wait_if_held(self) -> None:
        """Wait while requests are held."""
        released = self.released
        if released is None:
            return
        self.waiting += 1
        try:
            await released.wait()
        finally:
            self.waiting -= 1

    def draw(self) -> str | None:
        """None for a normal answer, else one of FAULT_KINDS."""
        if self.rate <= 0 or self._random.random() >= self.rate:
            return None
        return self._random.choices(FAULT_KINDS, weights=_FAULT_WEIGHTS)[0]


@dataclass
class Stats:
    """Counters exposed at GET /sandbox/stats."""

    requests: dict[str, Counter[str]] = field(default_factory=dict)
    throttled: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def count(self, endpoint: str, status: str) -> None:
        """One answered request of `endpoint` with `status` (a code, or 'dropped')."""
        self.requests.setdefault(endpoint, Counter())[status] += 1


class RequestLog:
    """Every API request in arrival order, bounded; older entries fall off the front."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit or None)
        self._limit = limit
        self.seq = 0
        self.evicted = 0

    def add(self, entry: dict[str, Any]) -> None:
        """Append `entry`, numbering it; never stores headers (so never an API key)."""
        self.seq += 1
        if self._limit == 0:
            self.evicted += 1
            return
        if len(self._entries) == self._entries.maxlen:
            self.evicted += 1
        self._entries.append({"seq": self.seq, **entry})

    def since(self, seq: int) -> list[dict[str, Any]]:
        """Entries numbered above `seq`."""
        return [entry for entry in self._entries if entry["seq"] > seq]


class Sandbox:
    """One account of the running sandbox: config, OpenAPI operations, store, limiter, faults,
    stats, log, and the scheduler of its asynchronous work (merges, deletions, event and
    profile jobs). `account` says who it is (the default account unless given); `revoked`
    makes every request with its keys a 401 (a key revoked in Klaviyo) until cleared.

    `job_delay` starts as `config.job_delay_seconds`; POST /sandbox/jobs changes it at run
    time (jobs already waiting keep their time)."""

    def __init__(
        self,
        config: SandboxConfig,
        account: SandboxAccount | None = None,
        operations: dict[str, Operation] | None = None,
    ) -> None:
        self.config = config
        self.account = account or config.all_accounts()[0]
        self.operations: dict[str, Operation] = (
            operations if operations is not None else load_operations(config.openapi_dir)
        )
        self.revoked = False
        self.store = Store()
        self.limiter = self._limiter()
        self.faults = FaultInjector(config.fault_rate, config.fault_seed)
        self.stats = Stats()
        self.log = RequestLog(config.request_log_limit)
        self.scheduler = Scheduler()
        self.catalog = Catalog(config.catalog_jobs_cap)  # items, variants, categories, jobs
        self.job_queue = JobQueue(self.scheduler)
        self.job_delay = config.job_delay_seconds
        self._seed_lists()

    def _limiter(self) -> RateLimiter:
        config = self.config
        return RateLimiter(
            config.time_scale, enforce=config.rate_limits, factor=self.account.rate_limit_factor
        )

    def _seed_lists(self) -> None:
        """The lists the account starts with (`SandboxConfig.lists` for the default one)."""
        now = iso(datetime.now(UTC))
        for seed in self.account.lists:
            process = "double_opt_in" if seed.double_opt_in else "single_opt_in"
            self.store.lists[seed.id] = MailingList(seed.id, seed.name, process, now, now)

    def queue_merge(self, destination_id: str, source_id: str) -> MergeTask:
        """Queue a merge (see `Store.queue_merge`) and apply it after `merge_delay_seconds`."""
        delay = self.config.merge_delay_seconds
        due = datetime.now(UTC) + timedelta(seconds=delay)
        task = self.store.queue_merge(destination_id, source_id, due)
        self.scheduler.later(delay, partial(self.store.apply_merge, task))
        return task

    def queue_deletion(self, kind: str, value: str) -> DeletionTask:
        """Queue a data-privacy deletion and apply it after `deletion_delay_seconds`."""
        delay = self.config.deletion_delay_seconds
        due = datetime.now(UTC) + timedelta(seconds=delay)
        task = self.store.queue_deletion(kind, value, due)
        self.scheduler.later(delay, partial(self.store.apply_deletion, task))
        return task

    def accept(
        self,
        kind: str,
        size: int,
        apply: Callable[[], object],
        check: Callable[[], object] | None = None,
    ) -> QueuedJob | None:
        """An accepted event or profile job: applied now, or after `job_delay` (see
        `JobQueue.submit`; `check` raises what `apply` would, without writing)."""
        return self.job_queue.submit(kind, size, apply, self.job_delay, check)

    def reset(self) -> None:
        """Back to the state right after start-up (fault rate, job delay, seeded lists, key
        not revoked); queued tasks and jobs dropped."""
        self.revoked = False
        self.scheduler.cancel_all()
        self.job_queue.clear()
        self.job_delay = self.config.job_delay_seconds
        self.store.reset()
        self.catalog = Catalog(self.config.catalog_jobs_cap)
        self._seed_lists()
        self.limiter.reset()
        self.faults.hold(False)
        self.faults = FaultInjector(self.config.fault_rate, self.config.fault_seed)
        self.stats = Stats()
        self.log = RequestLog(self.config.request_log_limit)


class SandboxAccounts:
    """Every account the sandbox serves (`Sandbox` each), found by name or by key; the first
    is the default account: the one a request with an unknown key is answered for."""

    def __init__(self, config: SandboxConfig) -> None:
        operations = load_operations(config.openapi_dir)
        self.by_name: dict[str, Sandbox] = {
            account.name: Sandbox(config, account, operations)
            for account in config.all_accounts()
        }
        self.default = next(iter(self.by_name.values()))
        self._private = {k: sb for sb in self.by_name.values() for k in sb.account.api_keys}
        self._public = {k: sb for sb in self.by_name.values() for k in sb.account.public_keys}

    def by_private_key(self, key: str) -> Sandbox | None:
        """The account whose private key `key` is (compared in constant time)."""
        found = None
        for known, sandbox in self._private.items():
            if hmac.compare_digest(key, known):
                found = sandbox
        return found

    def by_public_key(self, company_id: str) -> Sandbox | None:
        return self._public.get(company_id)

    def __iter__(self) -> Iterator[Sandbox]:
        return iter(self.by_name.values())
