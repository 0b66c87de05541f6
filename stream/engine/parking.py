"""One account's trouble is its own: while Klaviyo refuses its key, fails or throttles it, its
batches are parked here instead of stopping the service or filling its pending records.

With an accounts file every account has a `Parking` (without one, a refused key stops the
service as it always did: a single account has no one else to protect):

- **parked**: the account's requests meet trouble (`trouble`: a 401/403, a refused revision, a
  5xx, a timeout, a 429) until one is answered (`fine`). Meanwhile its send stage keeps the
  batches it takes here instead of sending them (`keep`), and the deliver stage keeps the items
  a trouble left unsent (a refused key) or that ran out of retries (an outage): none is
  dead-lettered, none stops the service. The other accounts' copies of the same records go on;
  those records stay unfinished, so their partitions' committed offsets wait (a restart reads
  that span again; each account's dedup window drops what it had), their delivery does not.
- **probed**: while parked, once nothing of the account is on the wire, the oldest kept batch
  is sent again after a backoff (1 s, doubling up to `probe_max`): one probe at a time. An
  answer unparks the account, and every kept batch is sent again, oldest first.
- **bounded**: a parked account's kept batches become dead letters of that account
  (`AccountParked`, `dlq.account`, the last refusal as the reason, replayable with `dlq replay
  --account`) once kept for `max_seconds` (PARK_MAX_SECONDS), and the oldest at once while
  they carry more than `max_records` records (PARK_MAX_ITEMS), so that one account's parked
  work never fills MAX_PENDING_RECORDS and pauses the partitions it shares.

Order is kept: a kept batch stays *taken* for its lane (`finish` is called only once it is
resolved), so a newer profile snapshot of a person in it waits behind it, and the gate holds a
person's next consent action until the kept one is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from stream.completion.ledger import ended
from stream.core.errors import AccountParked, KlaviyoError, StreamError
from stream.delivery.actions import ActionBatch
from stream.delivery.batch import Batch, Sendable
from stream.telemetry import metrics

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # how often the bounds are checked and the gauges published
FIRST_PROBE_SECONDS = 1.0
PROBE_MAX_SECONDS = 30.0

AnyBatch = Batch | ActionBatch
Expire = Callable[[Sequence[Sendable], StreamError], Awaitable[None]]
Cancel = Callable[[Sequence[Sendable]], None]


@dataclass(eq=False, slots=True)
class Kept:
    """A batch kept back: `batch` is what is sent again; `origin` the batch its lane took
    (`finish` tells the lane it is resolved: None until the send stage hands it over)."""

    batch: AnyBatch
    origin: object
    since: float  # monotonic: when it was first kept
    finish: Callable[[], None] | None = None

    @property
    def records(self) -> int:
        return sum(len(item.records) for item in self.batch.items)


class Parking:
    """One account's kept batches, its parked state and its probes (see the module note)."""

    def __init__(
        self,
        account: str,
        deliver: Callable[[AnyBatch], Awaitable[None]],
        expire: Expire,
        cancel: Cancel,
        *,
        max_seconds: float,
        max_records: int,
        max_in_flight: int = 8,
        in_flight: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.account = account
        self._deliver = deliver  # the deliver stage's (`Outcomes.deliver`)
        self._expire = expire  # dead-letter items (`Outcomes.expire`)
        self._cancel = cancel  # items of a revoked partition (`Outcomes.cancel`)
        self.max_seconds = max_seconds
        self.max_records = max_records
        self._in_flight = in_flight  # the send stage's batches on the wire
        self._sending = asyncio.Semaphore(max_in_flight)
        self._clock = clock
        self.since: float | None = None  # parked since (monotonic); None: not parked
        self.cause: KlaviyoError | None = None  # the last trouble
        self._kept: deque[Kept] = deque()
        self.records = 0  # records the kept batches carry
        self._resending: dict[int, Kept] = {}  # id(batch) -> its entry, being sent again
        self._again: set[int] = set()  # of those, kept again
        self._probe_at = 0.0
        self._backoff = FIRST_PROBE_SECONDS
        self.probe_max = min(PROBE_MAX_SECONDS, max(FIRST_PROBE_SECONDS, max_seconds / 10))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # the wire's --------------------------------------------------------------------------------

    def trouble(self, error: KlaviyoError) -> None:
        """A request of the account met trouble (it is retried, or its items kept)."""
        self.cause = error
        if self.since is None:
            self.since = self._clock()
            self._probe_at = self.since + self._backoff
            log.warning(
                "account parked",
                extra={"account": self.account, "error": f"{type(error).__name__}: {error}"[:500]},
            )

    def fine(self) -> None:
        """A request of the account was answered: it is back; what was kept goes again."""
        if self.since is None:
            return
        log.info("account unparked", extra={"account": self.account, "kept": len(self._kept)})
        self.since = None
        self._backoff = FIRST_PROBE_SECONDS
        self._wake.set()

    @property
    def parked(self) -> bool:
        return self.since is not None

    # the send stage's and the deliver stage's -----------------------------------------------

    def keep(
        self, origin: object, batch: AnyBatch, finish: Callable[[], None] | None = None
    ) -> None:
        """Keep `batch` (all or part of `origin`, the batch its lane took) until the account
        is back; `finish` (the lane's) is given now or by `handing`."""
        if not batch.items:
            if finish is not None:
                finish()
            return
        before = self._resending.get(id(origin))
        if before is not None:  # a kept batch sent again and kept again: still the oldest
            self._again.add(id(origin))
            entry = Kept(batch, before.origin, before.since, before.finish)
            self._kept.appendleft(entry)
        else:
            entry = Kept(batch, origin, self._clock(), finish)
            self._kept.append(entry)
        self.records += entry.records
        self._wake.set()

    def handing(self, origin: object, finish: Callable[[], None]) -> bool:
        """The send stage delivered `origin`: True when part of it was kept (its lane waits
        for `finish`, called once that part is resolved)."""
        for entry in self._kept:
            if entry.origin is origin and entry.finish is None:
                entry.finish = finish
                self._wake.set()
                return True
        return False

    # running ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the probes, the release and the bounds (on the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the kept batches being sent again, then stop; what is
        still kept stays unfinished (its records are read again by the next run)."""
        if self._task is not None:
            self._task.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            self._wake.clear()
            now = self._clock()
            if self.since is not None:
                await self._bound(now)
            self._publish(now)
            ready = [k for k in self._kept if k.finish is not None]
            if not ready:
                continue
            if self.since is None:  # back: everything kept goes again, oldest first
                for entry in ready:
                    await self._sending.acquire()
                    if self.since is not None or entry not in self._kept:
                        self._sending.release()  # parked again meanwhile: probes resume
                        break
                    self._kept.remove(entry)
                    self.records -= entry.records
                    self._spawn(entry)
            elif now >= self._probe_at and not self._resending and self._in_flight() == 0:
                entry = ready[0]  # one probe: the oldest
                self._kept.remove(entry)
                self.records -= entry.records
                self._backoff = min(self._backoff * 2, self.probe_max)
                self._probe_at = now + self._backoff
                await self._sending.acquire()
                self._spawn(entry)

    def _spawn(self, entry: Kept) -> None:
        task = asyncio.get_running_loop().create_task(self._send(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, entry: Kept) -> None:
        """Send a kept batch again; resolved unless kept again (then its lane waits on)."""
        batch = entry.batch
        batch.reserved = None  # its slot, if any, was spent on the try that failed
        self._resending[id(batch)] = entry
        try:
            await self._deliver(batch)
        finally:
            self._sending.release()
            del self._resending[id(batch)]
            if id(batch) in self._again:
                self._again.discard(id(batch))
            elif entry.finish is not None:
                entry.finish()
            self._wake.set()

    async def _bound(self, now: float) -> None:
        """While parked: items of revoked partitions are cancelled; batches kept longer than
        `max_seconds`, and the oldest while more than `max_records` records are kept, become
        dead letters of the account."""
        cause = self.cause
        reason = "Klaviyo trouble" if cause is None else f"{type(cause).__name__}: {cause}"
        for entry in list(self._kept):
            if entry.finish is None:
                continue
            gone = [item for item in entry.batch.items if ended(item)]
            over_time = now - entry.since > self.max_seconds
            over_count = self.records > self.max_records
            if not gone and not over_time and not over_count:
                continue
            self._kept.remove(entry)
            self.records -= entry.records
            if gone:
                self._cancel(gone)
            rest = [item for item in entry.batch.items if not ended(item)]
            if rest and (over_time or over_count):
                why = f"{self.max_seconds:g} s (PARK_MAX_SECONDS)" if over_time else (
                    f"{self.max_records} records (PARK_MAX_ITEMS)"
                )  # fmt: skip
                error = AccountParked(
                    f"parked past {why}: account {self.account}, {reason}"[:2000],
                    cause.status if cause is not None else 0,
                    cause.errors if cause is not None else None,
                )
                await self._expire(rest, error)
            elif rest:  # only some items were of revoked partitions: the rest stays kept
                entry.batch = entry.batch.without(gone)
                self._kept.appendleft(entry)
                self.records += entry.records
                continue
            entry.finish()

    def _publish(self, now: float) -> None:
        items = sum(len(k.batch.items) for k in self._kept)
        oldest = min((k.since for k in self._kept), default=now)
        metrics.PARKED_ITEMS.labels(self.account).set(items)
        metrics.PARKED_OLDEST.labels(self.account).set(now - oldest)
