"""Klaviyo's asynchronous work: tasks a request queues and the sandbox applies a little later.

A profile merge or a data-privacy deletion is answered at once and applied after a
configurable delay, as Klaviyo's own background tasks are. The `Scheduler` runs them on the
sandbox's event loop, so a task is atomic with respect to requests, and cancels what is still
pending on reset or shutdown.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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
