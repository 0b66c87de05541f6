"""The catalog stage: catalog records in, Klaviyo bulk jobs out, outcomes to the ledger.

Guarantees, in order of the path a record takes:

- Latest wins. Per resource (`item:<id>`…) one version waits to be sent; a newer one read
  meanwhile takes its place (the older record finishes `superseded`), and a version no newer
  than what Klaviyo accepted (the state store says) changes nothing. One job per resource is in
  flight at a time, so an older version can never land after a newer one.
- Create or update from what the store knows Klaviyo accepted: a resource it has is updated,
  any other is created, a deletion of one already deleted is done at once. A job's
  per-resource error is checked against a read-back: a create refused because the resource
  exists becomes an update, an update refused because it does not becomes a create, a delete
  of what is gone is done; any other error is a dead letter with Klaviyo's words.
- Order between kinds: a variant's create waits for its item's create when that item is on its
  way here, an item's for its categories', at most `CATALOG_DEPENDENCY_WAIT_SECONDS`.
- Jobs: up to 100 resources (5 MB) per job per kind and action; a waiting resource goes within
  `CATALOG_LINGER_MS` when there is room: at most `CATALOG_MAX_JOBS_IN_PROGRESS` × the rate
  share jobs in progress. A job's id is in the state store from its 202 until it is over, so a
  crash picks it up: a re-read record whose resource a stored job holds waits for that job
  (polled by whoever reads it) before anything else is sent for it.
- A record is finished (its offset may move) when its version is accepted, superseded, or
  dead-lettered. Records in the stage are bounded by `CATALOG_MAX_PENDING_RECORDS` (the
  service pauses catalog partitions only), never counted against `MAX_PENDING_RECORDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from stream.catalog.decode import CatalogDecoder
from stream.catalog.entries import Entry, Finished, Job, Slot, applied, chunks
from stream.catalog.records import Resource
from stream.catalog.running import STATE, JobRunning
from stream.completion.ledger import Item, Ledger, Outcome
from stream.core.calls import Record
from stream.core.errors import (
    InternalError,
    KlaviyoError,
    RecordError,
)
from stream.core.retry import Waiting, until_available
from stream.klaviyo.catalog import MAX_JOB_BYTES, MAX_PER_JOB, Action, Kind, job_endpoint
from stream.klaviyo.client import Requester
from stream.state.catalog import CatalogState, CatalogStore, Version
from stream.telemetry import metrics

log = logging.getLogger(__name__)

ORDER: tuple[Kind, ...] = ("category", "item", "variant")  # what others may wait for first
ACTION_ORDER: tuple[Action, ...] = ("delete", "create", "update")
DONE = {"create": "created", "update": "updated", "delete": "deleted"}  # outcome per action
MAX_ATTEMPTS = 4  # sends of one version (recoveries, unknown jobs) before it is a dead letter
POLL_FIRST = 1.0  # seconds before a job's first status GET while nothing is learnt yet
RESEND_AFTER = 5.0  # a job refused for a reason that may pass (Klaviyo down): sent again after
SETTLE_EVERY = 0.2  # seconds finished versions wait to be handed to the ledger together


@functools.cache
def _counter(kind: str, outcome: str) -> Any:
    """The catalog_resources_total child of (kind, outcome), looked up once."""
    return metrics.CATALOG_RESOURCES.labels(kind, outcome)


class CatalogStage(JobRunning):
    """Catalog records → jobs → outcomes; `start()`, `accept(records)`, `close(timeout)`."""

    def __init__(
        self,
        store: CatalogStore,
        request: Requester,
        ledger: Ledger,
        decoder: CatalogDecoder,
        *,
        max_pending: int = 50_000,
        linger_seconds: float = 1.0,
        max_jobs: Callable[[], int] = lambda: 500,
        dependency_wait: float = 60.0,
        time_scale: float = 1.0,
        pace: Callable[[str], float] = lambda endpoint: 0.0,
        fatal: Callable[[BaseException], None] = lambda exc: None,
        waiting: Waiting | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._request = request
        self._ledger = ledger
        self._decoder = decoder
        self.max_pending = max_pending
        self._linger = linger_seconds
        self._max_jobs = max_jobs
        self._dependency_wait = dependency_wait
        self._scale = time_scale
        self._pace = pace  # seconds until the governor has a slot for an endpoint
        self._fatal = fatal
        self._waiting = waiting
        self._clock = clock
        self._slots: dict[str, Slot] = {}
        self._ready: dict[str, None] = {}  # keys whose waiting version may be sent, oldest first
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self._following: set[str] = set()  # stored jobs being followed
        self._finished: dict[Outcome, list[Item]] = {}  # finished, to hand to the ledger together
        self._settling: asyncio.TimerHandle | None = None
        self._hurry = False
        self._closing = False
        self._expected = POLL_FIRST * time_scale  # learnt job duration (moving average)
        self.pending = 0  # records in the stage, not yet handed back to the ledger
        self.jobs_in_progress = 0

    # the service's calls ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the pump (on the running loop)."""
        self._pump = asyncio.get_running_loop().create_task(self._run())

    async def accept(self, records: Sequence[Record]) -> None:
        """Take the catalog records of one fetch: decode, compare, queue."""
        await until_available(lambda: self._decoder.prepare(records), "schema registry",
                              waiting=self._waiting)  # fmt: skip
        decoded: list[tuple[Resource, Record]] = []
        for record in records:
            try:
                decoded.append((self._decoder.decode(record), record))
            except RecordError as exc:
                self._ledger.reject(record, exc, exc.stage)
            except Exception as exc:  # the per-record barrier: a record built to hurt
                reason = InternalError(f"unexpected {type(exc).__name__}: {str(exc)[:1500]}")
                self._ledger.reject(record, reason, "decode")
        unknown = list({r.key: None for r, _ in decoded if r.key not in self._slots})
        if unknown:
            states = await until_available(
                lambda: self._store.catalog_states(unknown), STATE, waiting=self._waiting
            )
            for key in unknown:
                self._slots[key] = Slot(states.get(key, CatalogState()))
        now = self._clock()
        adopt: dict[str, None] = {}
        for resource, record in decoded:
            job_id = self._take(resource, record, now)
            if job_id is not None:
                adopt[job_id] = None
        for job_id in adopt:
            await self._adopt(job_id)
        self._publish()
        self._wake.set()

    def hurry(self) -> None:
        """Send what waits now, without lingering (a revoke, shutdown)."""
        self._hurry = True
        self._wake.set()

    async def close(self, timeout: float) -> None:
        """Send nothing more; wait (at most `timeout` s) for the jobs in flight to finish.
        What is left stays unfinished: its jobs are in the state store for the next start."""
        self._closing = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in [*self._tasks, *([self._pump] if self._pump else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._pump] if self._pump else []),
                             return_exceptions=True)  # fmt: skip
        if self._settling is not None:
            self._settling.cancel()
        self._settle_now()

    # records → waiting versions ----------------------------------------------------------------

    def _take(self, resource: Resource, record: Record, now: float) -> str | None:
        """Queue one version; the id of a stored job to follow first, if its resource is in
        one (a crash left it, or another replica sent it)."""
        version: Version = (record.topic, record.partition, record.offset)
        slot = self._slots[resource.key]
        kind = resource.kind
        if applied(version, slot.state.version):
            self._count(kind, "unchanged")
            self._settle_later([Finished([record])])
            return None
        waiting = slot.waiting
        if waiting is not None and version == waiting.version:  # read again (a rebalance)
            self._ledger.expect(record)  # it finishes with that version, never before it
            self.pending += 1
            waiting.records.append(record)
            self._ledger.processed(record)
            return None
        if waiting is not None and applied(version, waiting.version):
            self._count(kind, "superseded")
            self._settle_later([Finished([record])], Outcome.SUPERSEDED)
            return None
        if waiting is not None:  # the newer version takes its place
            self._finish(waiting, "superseded")
            self._settle_later([waiting], Outcome.SUPERSEDED)
        self._ledger.expect(record)
        self.pending += 1
        slot.waiting = Entry(resource, version, [record], now)
        self._ledger.processed(record)
        stored = slot.state.job
        if stored is not None and slot.adopted is None and slot.sent is None:
            slot.adopted = stored  # busy until that job is over
            return stored
        if not slot.busy:
            self._ready[resource.key] = None
        return None

    async def _adopt(self, job_id: str) -> None:
        """A stored job (sent before a crash, or by another replica) holds these resources:
        follow it to its end before anything else is sent for them."""
        if job_id in self._following:
            return  # its end frees every slot adopted by it
        job = await until_available(lambda: self._store.catalog_job(job_id), STATE,
                                    waiting=self._waiting)  # fmt: skip
        held = [key for key, slot in self._slots.items() if slot.adopted == job_id]
        if job is None:  # over meanwhile: what it did is in the store now
            states = await until_available(lambda: self._store.catalog_states(held), STATE,
                                           waiting=self._waiting)  # fmt: skip
            for key in held:
                slot = self._slots[key]
                found = states.get(key, CatalogState())
                slot.state = CatalogState(found.exists, found.version, None)
                slot.adopted = None
                self._release_slot(key)
            return
        for key, _version in job.members:
            member = self._slots.get(key)
            if member is not None and member.sent is None:
                member.adopted = job_id
                self._ready.pop(key, None)
        self._following.add(job_id)
        self._spawn(self._follow(job))

    # the pump: waiting versions → jobs --------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait = None if self._closing else self._plan()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _plan(self) -> float | None:
        """Build the jobs that may go now, while there is room for them and a send slot (the
        others keep filling meanwhile); how long until it is worth looking again."""
        now = self._clock()
        hurry, self._hurry = self._hurry, False
        groups: dict[tuple[Kind, Action], list[Entry]] = {}
        for key in list(self._ready):
            slot = self._slots[key]
            current = slot.waiting
            if current is None or slot.busy:
                self._ready.pop(key, None)
                continue
            if self._waits(current, now):
                continue
            action = self._action(current, slot)
            if action is None:  # a deletion of what is gone already
                self._ready.pop(key, None)
                slot.waiting = None
                self._finish(current, "gone")
                self._settle_later([current])
                self._forget(key)
                continue
            groups.setdefault((current.resource.kind, action), []).append(current)
        again = self._linger if self._ready else None
        for kind in ORDER:
            for action in ACTION_ORDER:
                group = groups.get((kind, action))
                if not group:
                    continue
                due = hurry or now - min(e.since for e in group) >= self._linger
                for job in chunks(kind, action, group):
                    if not due and len(job.entries) < MAX_PER_JOB and job.size < MAX_JOB_BYTES // 2:
                        break  # the last, partial job keeps filling until the linger is over
                    if self.jobs_in_progress >= max(1, self._max_jobs()):
                        return again
                    wait = self._pace(job_endpoint(kind, action))
                    if wait > 0:  # no send slot yet: the group keeps filling meanwhile
                        again = min(again or wait, wait)
                        break
                    self._send(job)
        return again

    def _waits(self, current: Entry, now: float) -> bool:
        """A create that should follow its item's (a variant) or categories' (an item) create,
        still on its way here, within the dependency bound."""
        if now - current.since >= self._dependency_wait:
            return False
        resource = current.resource
        needed = [f"item:{resource.item_id}"] if resource.kind == "variant" else []
        needed += [f"category:{c}" for c in resource.categories]
        for key in needed:
            other = self._slots.get(key)
            if other is not None and other.state.exists is not True and (
                other.waiting is not None or other.busy
            ):
                return True
        return False

    @staticmethod
    def _action(current: Entry, slot: Slot) -> Action | None:
        if current.resource.deleted:
            return None if slot.state.exists is False else "delete"
        return "update" if slot.state.exists else "create"

    def _send(self, job: Job) -> None:
        for current in job.entries:
            key = current.resource.key
            slot = self._slots[key]
            slot.waiting, slot.sent = None, current
            self._ready.pop(key, None)
        self.jobs_in_progress += 1
        self._publish()
        self._spawn(self._job(job))

    def _accepted(self, entries: list[Entry], action: str) -> None:
        """Klaviyo has these versions: the slots learn it, the records finish delivered."""
        if not entries:
            return
        outcome = DONE.get(action, action)
        for current in entries:
            key = current.resource.key
            slot = self._slots[key]
            slot.sent = None
            slot.state = CatalogState(not current.resource.deleted, current.version, None)
            self._finish(current, outcome)
            self._release_slot(key)
        self._settle_later(entries)

    def _again(self, entries: list[Entry], error: KlaviyoError | None, delay: bool = False) -> None:
        """Send these versions again (unless a newer one waits); a dead letter after too many."""
        dead = []
        for current in entries:
            current.attempts += 1
            current.error = error or current.error
            key = current.resource.key
            slot = self._slots[key]
            slot.sent = None
            if slot.waiting is not None:  # a newer version came meanwhile: it goes instead
                self._finish(current, "superseded")
                self._settle_later([current], Outcome.SUPERSEDED)
            elif current.attempts >= MAX_ATTEMPTS:
                dead.append(current)
                continue
            else:
                slot.waiting = current
                if delay:
                    current.since = self._clock() + RESEND_AFTER * self._scale - self._linger
            self._release_slot(key)
        self._dead(dead, error)

    def _dead(self, entries: list[Entry], error: KlaviyoError | None) -> None:
        for current in entries:
            reason = current.error or error or KlaviyoError("catalog job failed")
            self._finish(current, "dead_lettered")
            self._ledger.fail([current], reason, "catalog")
            slot = self._slots[current.resource.key]
            if slot.sent is current:
                slot.sent = None
            self._release_slot(current.resource.key)

    def _release_slot(self, key: str) -> None:
        """The resource has nothing in flight now: its waiting version may go, or it is
        forgotten (the store keeps its state)."""
        slot = self._slots.get(key)
        if slot is None or slot.busy:
            return
        current = slot.waiting
        if current is not None and applied(current.version, slot.state.version):
            slot.waiting = None  # a stored job it waited for carried this very version
            self._finish(current, "unchanged")
            self._settle_later([current])
            current = None
        if current is not None:
            self._ready[key] = None
        else:
            self._forget(key)

    def _forget(self, key: str) -> None:
        slot = self._slots.get(key)
        if slot is not None and slot.waiting is None and not slot.busy:
            del self._slots[key]

    # bookkeeping ------------------------------------------------------------------------------

    def _settle_later(self, items: Sequence[Item], outcome: Outcome = Outcome.DELIVERED) -> None:
        """Hand finished items to the ledger together, every SETTLE_EVERY seconds: each hand-over
        may store an offset, and librdkafka's offset store waits while a fetch is running."""
        self._finished.setdefault(outcome, []).extend(items)
        if self._settling is None:
            self._settling = asyncio.get_running_loop().call_later(SETTLE_EVERY, self._settle_now)

    def _settle_now(self) -> None:
        self._settling = None
        done, self._finished = self._finished, {}
        for outcome, items in done.items():
            self._ledger.settle(items, outcome)

    def _finish(self, current: Entry, outcome: str) -> None:
        self.pending -= len(current.records)
        self._count(current.resource.kind, outcome)

    @staticmethod
    def _count(kind: str, outcome: str) -> None:
        _counter(kind, outcome).inc()

    def _publish(self) -> None:
        metrics.CATALOG_PENDING_RECORDS.set(self.pending)
        metrics.CATALOG_JOBS.set(self.jobs_in_progress)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("catalog job task failed", exc_info=task.exception())
