"""The send stage on a clock the test moves: a batch keeps filling while the governor has no send
slot for it and leaves full (with everything that arrived meanwhile); with a slot free it
leaves after the linger with what it has; nothing leaves before its slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from stream.core.calls import Record
from stream.core.settings import SANDBOX_API_KEY
from stream.delivery.batch import Batch, Item
from stream.delivery.deliver import Deliverer
from stream.delivery.send import Sender
from stream.klaviyo.client import EVENTS_BULK, KlaviyoClient
from stream.klaviyo.governor import Governor
from stream.local.sandbox import SandboxConfig, SandboxServer
from tests.support.fake_clock import FakeClock

LINGER = 0.2


class ManualClock:
    """Time that moves only when the test moves it; a sleeper wakes once its time has come."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleepers = 0
        self._moved = asyncio.Condition()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        async with self._moved:
            self.sleepers += 1
            try:
                await self._moved.wait_for(lambda: self.now >= until - 1e-9)
            finally:
                self.sleepers -= 1

    async def advance(self, seconds: float) -> None:
        async with self._moved:
            self.now += seconds
            self._moved.notify_all()
        await settle()


async def settle() -> None:
    """Let every task that can run, run (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


def event(n: int, person: str = "a@x.io") -> Item:
    return Item(
        "events",
        {"email": person},
        {
            "properties": {"n": n},
            "time": "2026-01-01T00:00:00+00:00",
            "unique_id": f"m{n}",
            "metric": {"data": {"type": "metric", "attributes": {"name": "E"}}},
        },
        [Record("t", 0, n)],
    )


class Stage:
    """A sender on the manual clock, its governor on the same clock, and what it delivered."""

    def __init__(self, max_events: int = 10) -> None:
        self.clock = ManualClock()
        self.governor = Governor(clock=self.clock, sleep=self.clock.sleep, jitter=lambda: 0.0)
        self.sent: list[tuple[float, list[int]]] = []  # (clock time, offsets of its records)
        self.sender = Sender(
            self.governor,
            self.deliver,
            max_events=max_events,
            linger_seconds=LINGER,
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    async def deliver(self, batch: Batch) -> None:
        # as Deliverer.request: the first request spends the slot the send stage reserved
        if batch.reserved != EVENTS_BULK:
            await self.governor.acquire(EVENTS_BULK)
        self.sent.append((self.clock.now, [r.offset for r in batch.records]))

    def add(self, first: int, count: int) -> None:
        for n in range(first, first + count):
            self.sender.add(event(n, person=f"p{n % 3}@x.io"))

    @property
    def slot(self) -> float:
        return self.governor.interval(EVENTS_BULK)

    async def no_slot_free(self) -> None:
        """Requests just went out: the governor's next slot is one interval away."""
        while self.governor.delay(EVENTS_BULK) == 0:
            await self.governor.acquire(EVENTS_BULK)
        assert self.governor.delay(EVENTS_BULK) == pytest.approx(self.slot)


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    made = Stage()
    made.sender.start()
    yield made
    await made.sender.close(timeout=0)


async def test_a_batch_keeps_filling_while_it_waits_for_a_send_slot_and_leaves_full(
    stage: Stage,
) -> None:
    await stage.no_slot_free()
    stage.add(0, 3)
    await settle()
    await stage.clock.advance(LINGER)  # the linger is over, the slot is not there yet
    assert stage.sent == []
    stage.add(3, 4)
    await settle()
    assert stage.sent == [] and stage.sender.lanes["events"].next_size == 7
    stage.add(7, 5)  # 12 items: the open batch fills to 10, two start the next one
    await stage.clock.advance(stage.slot - LINGER - 0.01)
    assert stage.sent == [], "nothing leaves before its slot"
    await stage.clock.advance(0.01)
    assert [offsets for _, offsets in stage.sent] == [list(range(10))]
    assert stage.sender.lanes["events"].next_size == 2
    # the two left over wait for the next slot, not for another linger
    await stage.clock.advance(stage.slot - 0.01)
    assert len(stage.sent) == 1
    await stage.clock.advance(0.01)
    assert [offsets for _, offsets in stage.sent][1] == [10, 11]
    times = [at for at, _ in stage.sent]
    assert times[1] - times[0] == pytest.approx(stage.slot)


async def test_with_a_send_slot_free_a_batch_leaves_after_the_linger_with_what_it_has(
    stage: Stage,
) -> None:
    start = stage.clock.now
    stage.add(0, 3)
    await settle()
    await stage.clock.advance(LINGER - 0.01)
    assert stage.sent == [], "a batch with a free slot lingers to fill"
    await stage.clock.advance(0.01)
    assert stage.sent == [(pytest.approx(start + LINGER), [0, 1, 2])]


async def test_a_full_batch_with_a_free_slot_leaves_at_once(stage: Stage) -> None:
    stage.add(0, 10)
    await settle()
    assert [offsets for _, offsets in stage.sent] == [list(range(10))]


async def test_hurry_skips_the_linger_but_not_the_send_slot(stage: Stage) -> None:
    await stage.no_slot_free()
    stage.add(0, 2)
    await settle()
    stage.sender.hurry()
    await settle()
    assert stage.sent == [], "hurry never sends before the governor's slot"
    await stage.clock.advance(stage.slot)
    assert [offsets for _, offsets in stage.sent] == [[0, 1]]


async def test_the_reserved_slot_is_spent_by_the_batchs_first_request_and_not_taken_again() -> None:
    clock = FakeClock()
    governor = Governor(clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    interval = governor.interval(EVENTS_BULK)
    while governor.delay(EVENTS_BULK) == 0:  # the catch-up tolerance is used up
        await governor.acquire(EVENTS_BULK)
    async with SandboxServer(SandboxConfig(rate_limits=False)) as sandbox:
        client = KlaviyoClient(sandbox.url, SecretStr(SANDBOX_API_KEY), "2026-07-15")
        async with client:
            deliverer = Deliverer(client, governor=governor)
            clock.now += interval  # the next slot has come: the send stage reserves it
            await governor.acquire(EVENTS_BULK)
            reserved = Batch("events", [event(0), event(1)], reserved=EVENTS_BULK)
            settled = await deliverer.send(reserved)
            assert len(settled.delivered) == 2 and settled.failed == []
            assert clock.sleeps == [], "the batch's request took a second slot"
            plain = Batch("events", [event(2), event(3)])  # nothing reserved: it takes a slot
            settled = await deliverer.send(plain)
            assert len(settled.delivered) == 2
            assert clock.sleeps == [pytest.approx(interval)]
