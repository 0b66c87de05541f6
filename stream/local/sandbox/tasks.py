"""Klaviyo's asynchronous work: tasks a request queues and the sandbox applies a little later.

A profile merge or a data-privacy deletion is answered at once and applied after a
configurable delay, as Klaviyo's own background tasks are. The `Scheduler` runs them on the
sandbox's event loop, so a task is atomic with respect to requests, and cancels what is still
pending on reset or shutdown. Event and profile jobs (bulk events, profile bulk imports,
consent and suppression jobs) go through the `JobQueue`: validated when accepted, applied
`job_delay_seconds` later in the order they were accepted (at once, before the answer, when
there is no delay).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from .stamps import iso, new_id

log = logging.getLogger("stream.local.sandbox")

PENDING = "pending"
APPLIED = "applied"
SKIPPED = "skipped"


@dataclass(slots=True)
class MergeTask:
    """One queued `POST /api/profile-merge`: fold `source_id` into `destination_id`.

    `note` says why a task was skipped (the source already gone, the destination deleted, …).
    """

    id: str
    destination_id: str
    source_id: str
    requested_at: str
    due_at: str
    status: str = PENDING
    applied_at: str | None = None
    note: str | None = None


@dataclass(slots=True)
class DeletionTask:
    """One `POST /api/data-privacy-deletion-jobs`: delete every profile `kind`=`value` matches.

    `kind` is "id", "email" or "phone_number"; `deleted_ids` fills in when the task runs.
    """

    id: str
    kind: str
    value: str
    requested_at: str
    due_at: str
    status: str = PENDING
    applied_at: str | None = None
    deleted_ids: list[str] = field(default_factory=list)


class Scheduler:
    """Runs callbacks after a delay on the running event loop, in the order they were queued.

    Callbacks due at the same moment run in queue order (a merge chain is applied in the order
    it was requested); `cancel_all` drops whatever has not run.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call `callback()` on this loop in `delay` seconds (0: right after the current step)."""
        loop = asyncio.get_running_loop()
        self._seq += 1
        due = loop.time() + max(0.0, delay)
        heapq.heappush(self._queue, (due, self._seq, callback))
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Point the one timer at the earliest queued callback."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._queue:
            self._timer = loop.call_at(self._queue[0][0], self._run_due, loop)

    def _run_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        while self._queue and self._queue[0][0] <= loop.time():
            _, _, callback = heapq.heappop(self._queue)
            try:
                callback()
            except Exception:  # one broken task must not stall the ones behind it
                log.exception("sandbox task failed")
        self._arm(loop)

    @property
    def pending(self) -> int:
        """How many callbacks have not run yet."""
        return len(self._queue)

    def cancel_all(self) -> None:
        """Forget every callback that has not run (reset, shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


FAILED_KEPT = 100
"""How many failed jobs `JobQueue.failed` keeps (the newest)."""


@dataclass(slots=True)
class QueuedJob:
    """One accepted event or profile job waiting to be applied.

    `kind` names the request ("events", "profile_import", "subscribe", …), `size` how many
    events or profiles it carries; `ripe` turns true once its delay has passed (it still waits
    for the jobs accepted before it).
    """

    id: str
    kind: str
    size: int
    accepted_at: str
    due_at: str
    apply: Callable[[], object] = field(repr=False)
    ripe: bool = False


class JobQueue:
    """Event and profile jobs Klaviyo applies after answering, applied in acceptance order.

    `submit` applies a job at once when there is no delay and nothing is waiting (then its
    errors reach the caller, as a synchronous request's would); otherwise it runs `check`
    (whose errors reach the caller) and queues the job. A queued job whose `apply` raises is
    dropped whole and kept in `failed` with the reason (a profile deleted in the meantime, …).
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self.pending: deque[QueuedJob] = deque()
        self.applied: Counter[str] = Counter()
        self.failed: deque[dict[str, object]] = deque(maxlen=FAILED_KEPT)

    def submit(
        self,
        kind: str,
        size: int,
        apply: Callable[[], object],
        delay: float,
        check: Callable[[], object] | None = None,
    ) -> QueuedJob | None:
        """Apply `apply` now (returns None) or queue it for `delay` seconds (returns the job)."""
        if delay <= 0 and not self.pending:
            apply()
            self.applied[kind] += 1
            return None
        if check is not None:
            check()
        now = datetime.now(UTC)
        due = iso(now + timedelta(seconds=max(0.0, delay)))
        job = QueuedJob(new_id(), kind, size, iso(now), due, apply)
        self.pending.append(job)
        self._scheduler.later(delay, partial(self._ripen, job))
        return job

    def _ripen(self, job: QueuedJob) -> None:
        job.ripe = True
        self._drain()

    def _drain(self) -> None:
        """Apply ripe jobs from the front: a later job never overtakes an earlier one."""
        while self.pending and self.pending[0].ripe:
            job = self.pending.popleft()
            try:
                job.apply()
            except Exception as exc:  # the job is lost, as a Klaviyo job that fails is
                self.failed.append(
                    {
                        "id": job.id,
                        "kind": job.kind,
                        "accepted_at": job.accepted_at,
                        "failed_at": iso(datetime.now(UTC)),
                        "reason": str(exc),
                    }
                )
            else:
                self.applied[job.kind] += 1

    def flush(self) -> int:
        """Apply every waiting job now, in order; returns how many there were."""
        count = len(self.pending)
        for job in self.pending:
            job.ripe = True
        self._drain()
        return count

    def kinds(self) -> dict[str, int]:
        """How many jobs of each kind are waiting."""
        return dict(Counter(job.kind for job in self.pending))

    def clear(self) -> None:
        """Forget waiting jobs and counters (reset; the scheduler's timers are cancelled
        separately)."""
        self.pending.clear()
        self.applied.clear()
        self.failed.clear()
