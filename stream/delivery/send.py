"""Send stage: when each lane's batch leaves, and how many are in flight.

A batch leaves only when a send slot exists for it: while the rate-limit governor has no slot
for the lane's endpoint, or all of the lane's in-flight permits are taken, the batch stays open
and keeps filling (up to 1,000 events / 5 MB), so the request that finally goes carries
everything that arrived meanwhile. The slot is reserved as the batch is taken (`Batch.reserved`,
spent by its first request: `stream.delivery.endpoints` says where that goes), so the next batch
waits for the slot after it. `linger` is the
longest a batch waits to fill when a slot is free. `hurry()` sends what waits without lingering
(a revoked partition drains, shutdown). Time is `clock` and `sleep` (tests move their own).

A `Hold` (an account's parking, `stream.engine.parking`) takes the batches while its account is
parked, without a slot or a permit, and any part of a delivered batch the deliver stage kept
back: such a batch stays taken for its lane until the hold calls its `finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

from stream.delivery.actions import Action, ActionBatch, ActionLane, action_lanes
from stream.delivery.batch import Batch, Item, Kind, Lane
from stream.delivery.endpoints import first_endpoint
from stream.klaviyo.governor import Governor

Deliver = Callable[[Batch | ActionBatch], Awaitable[None]]


class Hold(Protocol):
    """Where an account's batches wait while it is parked (`stream.engine.parking.Parking`)."""

    @property
    def parked(self) -> bool: ...

    def keep(
        self, origin: object, batch: Batch | ActionBatch, finish: Callable[[], None] | None = None
    ) -> None:
        """Keep `batch` (taken from its lane as `origin`); `finish` once it is resolved."""

    def handing(self, origin: object, finish: Callable[[], None]) -> bool:
        """True when part of the delivered `origin` was kept: it calls `finish` later."""


class Sender:
    """One lane and one pump task per kind; `add` items, `run()` until `close()`."""

    def __init__(
        self,
        governor: Governor,
        deliver: Deliver,
        *,
        max_events: int = 1000,
        max_profiles: int = 10_000,
        linger_seconds: float = 0.2,
        max_in_flight: int = 8,
        client_mode: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hold: Hold | None = None,
    ) -> None:
        self._hold = hold
        self._items: dict[Kind, Lane] = {
            "events": Lane("events", max_events, clock=clock),
            "profiles": Lane("profiles", max_profiles, clock=clock),
        }
        self._actions = action_lanes(client_mode, clock)  # consent, lists, deletion: one a kind
        self.lanes: dict[Kind, Lane | ActionLane] = {**self._items, **self._actions}
        self._governor = governor
        self._deliver = deliver
        self._linger = linger_seconds
        self._client_mode = client_mode
        self._clock = clock
        self._sleep = sleep
        kinds = tuple(self.lanes)
        self._arrived = {kind: asyncio.Event() for kind in kinds}  # the lane has items
        self._urgent = {kind: asyncio.Event() for kind in kinds}  # full, or hurry
        self._permits = {kind: asyncio.Semaphore(max_in_flight) for kind in kinds}
        self._hurry = dict.fromkeys(kinds, False)
        self._closing = False
        self._sending: set[asyncio.Task[None]] = set()
        self._pumps: list[asyncio.Task[None]] = []

    def add(self, item: Item | Action) -> None:
        """Queue one item (or action) in its lane."""
        kind = item.kind
        if isinstance(item, Action):
            self._actions[kind].add(item)
        else:
            self._items[kind].add(item)
        self._arrived[kind].set()
        if self.lanes[kind].full:
            self._urgent[kind].set()

    def hurry(self) -> None:
        """Send every waiting batch without lingering (each still waits for its send slot)."""
        for kind in self.lanes:
            self._hurry[kind] = True
            self._urgent[kind].set()

    @property
    def waiting(self) -> int:
        """Items in lanes, not yet sent."""
        return sum(lane.items + lane.parked for lane in self.lanes.values())

    @property
    def _movable(self) -> int:
        """Items in lanes that can still leave (while parked, upserts waiting behind a kept
        batch cannot)."""
        if self._hold is not None and self._hold.parked:
            return sum(lane.items for lane in self.lanes.values())
        return self.waiting

    @property
    def in_flight(self) -> int:
        """Batches being delivered."""
        return len(self._sending)

    def start(self) -> None:
        """Start the pumps (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._pumps = [loop.create_task(self._pump(kind)) for kind in self.lanes]

    async def close(self, timeout: float) -> None:
        """Send what waits (no linger) and wait, at most `timeout` s, for every answer; then
        stop the pumps and cancel what is still out (its records stay unfinished)."""
        self._closing = True
        self.hurry()
        deadline = self._clock() + timeout
        with contextlib.suppress(TimeoutError):
            while self._movable or self._sending:
                left = deadline - self._clock()
                if left <= 0:
                    break
                tasks = set(self._sending)
                if tasks:
                    await asyncio.wait(tasks, timeout=min(left, 0.5))
                else:
                    await asyncio.sleep(0.05)  # a pump is waiting for its send slot
        for task in [*self._pumps, *self._sending]:
            task.cancel()
        await asyncio.gather(*self._pumps, *self._sending, return_exceptions=True)

    async def _pump(self, kind: Kind) -> None:
        lane = self.lanes[kind]
        arrived, urgent, permits = self._arrived[kind], self._urgent[kind], self._permits[kind]
        while True:
            opened = lane.opened
            if opened is None:
                self._hurry[kind] = False
                arrived.clear()
                await arrived.wait()
                continue
            if not lane.full and not self._hurry[kind]:
                remaining = opened + self._linger - self._clock()
                if remaining > 0:  # a slot may be free: let the batch fill for `linger`
                    urgent.clear()
                    await self._until(urgent, remaining)
                    continue
            hold = self._hold
            if hold is not None and hold.parked:  # kept, not sent: no slot, no permit
                batch = lane.take()
                if batch is not None:
                    hold.keep(batch, batch, partial(self._finish, lane, batch))
                continue
            await permits.acquire()
            try:
                while True:  # no slot yet: the batch keeps filling meanwhile
                    waiting = lane.next_batch
                    items = waiting.items if waiting is not None else []
                    endpoint = first_endpoint(kind, items, self._client_mode)
                    wait = self._governor.delay(endpoint)
                    if wait <= 0 or (hold is not None and hold.parked):
                        break
                    await self._sleep(wait)
                if hold is not None and hold.parked:  # parked while it waited for a slot
                    permits.release()
                    continue
                batch = lane.take()
                if batch is not None:
                    # reserve the slot now (it is free: no wait), so that the next batch waits
                    # for the slot after it, filling, instead of leaving on a slot it cannot have
                    await self._governor.acquire(endpoint)
                    batch.reserved = endpoint
            except BaseException:
                permits.release()
                raise
            if batch is None:
                permits.release()
                continue
            task = asyncio.get_running_loop().create_task(self._send(lane, batch, permits))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _until(self, event: asyncio.Event, seconds: float) -> None:
        """Wait until `event` is set or `seconds` have passed on the stage's clock."""
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    async def _send(
        self, lane: Lane | ActionLane, batch: Batch | ActionBatch, permits: asyncio.Semaphore
    ) -> None:
        try:
            await self._deliver(batch)
        finally:
            permits.release()
            finish = partial(self._finish, lane, batch)
            if self._hold is None or not self._hold.handing(batch, finish):
                finish()

    def _finish(self, lane: Lane | ActionLane, batch: Batch | ActionBatch) -> None:
        """`batch` is resolved: its lane may send its keys again."""
        lane.done(batch)
        if lane.items:
            self._arrived[lane.kind].set()
