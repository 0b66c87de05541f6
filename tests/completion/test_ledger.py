"""The completion ledger: offsets, generations, duplicates, dead letters and dedup marks.

The example tests pin one rule each; `LedgerModel` drives the ledger with random interleavings
of fetch, item outcomes, dead letters, revoke, assign, commit, dedup flushes and crashes (a real
SQLite state store underneath), and checks after every step that a committed offset never passes
a record whose items do not all have an outcome, and that every item gets exactly one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Message
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from stream.completion.dedup import Deduplicator
from stream.completion.ledger import Ledger, Outcome
from stream.core.calls import Record
from stream.core.errors import MappingError
from stream.core.retry import RetryPolicy
from stream.state import StateStore, open_store
from tests.support.deadletters import DeadLetterSink

TP = ("t", 0)
QUICK = RetryPolicy(base_seconds=0.001, max_delay_seconds=0.002)


@dataclass(eq=False)
class FakeItem:
    """An item as the ledger sees it: the records it finishes, and a label."""

    records: list[Record]
    label: str | None = None


def message(offset: int, mid: str, tp: tuple[str, int] = TP) -> Message:
    return Message(topic=tp[0], partition=tp[1], offset=offset, value=mid.encode())


@pytest.fixture
def store() -> StateStore:
    return open_store("sqlite:///:memory:")


def make(store: StateStore, letters: DeadLetterSink | None = None) -> tuple[Ledger, dict[Any, int]]:
    stored: dict[Any, int] = {}

    def store_offset(topic: str, partition: int, offset: int) -> None:
        stored[(topic, partition)] = offset

    return Ledger(
        Deduplicator(store), letters or DeadLetterSink(), store_offset, retry=QUICK
    ), stored


def begin(ledger: Ledger, *mids: str, start: int = 0) -> list[Record]:
    messages = [message(start + n, mid) for n, mid in enumerate(mids)]
    records = ledger.begin(messages, ledger.stamp(messages))
    for record in records:
        record.message_id = (record.value or b"").decode()
    return records


def test_the_offset_moves_only_past_a_finished_prefix(store: StateStore) -> None:
    ledger, stored = make(store)
    ledger.assign([TP])
    r0, r1, r2 = begin(ledger, "a", "b", "c")
    items = {}
    for r in (r0, r1, r2):
        r.open += 1
        items[r.offset] = FakeItem([r])
        ledger.processed(r)
    ledger.settle([items[1], items[2]])
    assert stored == {} and ledger.pending == 1  # finished, but not committable yet
    ledger.settle([items[0]])
    assert stored == {TP: 3} and ledger.pending == 0


async def test_a_dead_letter_is_acknowledged_before_its_record_finishes(store: StateStore) -> None:
    letters = DeadLetterSink()
    letters.failures = 1  # the first write meets a broker outage: retried, never dropped
    ledger, stored = make(store, letters)
    ledger.assign([TP])
    [record] = begin(ledger, "a")
    record.open += 1
    ledger.processed(record)
    ledger.fail([FakeItem([record], "line 2")], MappingError("bad"), "map")
    assert stored == {}
    await ledger.close(timeout=10)
    assert [(d.record.offset, d.stage) for d in letters.letters] == [(0, "map")] and stored == {
        TP: 1
    }


def test_a_copy_of_an_id_in_flight_waits_for_the_original(store: StateStore) -> None:
    """Case 1 in miniature: the copy must not move the offset past the original's record."""
    ledger, stored = make(store)
    dedup = ledger._dedup
    ledger.assign([TP])
    [original] = begin(ledger, "m")
    assert dedup.fresh([original]) == [True]
    original.open += 1
    item = FakeItem([original])
    ledger.processed(original)
    [copy] = begin(ledger, "m", start=1)
    [owner] = dedup.fresh([copy])
    assert owner is original
    copy.message_id = None
    ledger.wait_for(copy, owner)  # type: ignore[arg-type]
    assert stored == {}
    ledger.settle([item])
    assert stored == {TP: 2} and ledger.pending == 0


def test_a_revoked_generation_never_moves_the_next_ones_offsets(store: StateStore) -> None:
    ledger, stored = make(store)
    ledger.assign([TP])
    [old] = begin(ledger, "a")
    old.open += 1
    item = FakeItem([old])
    ledger.processed(old)
    messages = [message(1, "b")]
    stamps = ledger.stamp(messages)  # fetched before the revoke ...
    ledger.revoke([TP])
    ledger.assign([TP])
    assert ledger.begin(messages, stamps) == []  # ... never begun after it
    [again] = begin(ledger, "a")  # the next generation reads offset 0 again
    ledger.settle([item])  # the old generation's work finishes now
    assert stored == {}, "an ended generation moved an offset"
    assert ledger.pending == 1
    ledger.processed(again, Outcome.FILTERED)
    assert stored == {TP: 1}


def test_message_ids_are_remembered_only_when_nothing_of_the_record_failed(
    store: StateStore,
) -> None:
    ledger, _ = make(store)
    ledger.assign([TP])
    ok, failed, filtered, held = begin(ledger, "ok", "failed", "filtered", "held")
    ledger._dedup.fresh([ok, failed, filtered, held])
    for r in (ok, failed):
        r.open += 2
        ledger.processed(r)
    ledger.settle([FakeItem([ok]), FakeItem([ok]), FakeItem([failed])])
    ledger.processed(filtered, Outcome.FILTERED)
    ledger.processed(held, Outcome.HELD)

    async def fail() -> None:
        ledger.fail([FakeItem([failed], "line 1")], MappingError("bad line"), "map")
        await ledger.close(timeout=10)

    asyncio.run(fail())
    ledger._dedup.flush()
    assert store.seen(["ok", "failed", "filtered", "held"]) == {"ok", "held"}


# the model ------------------------------------------------------------------------------------

SHAPES = ("items1", "items2", "filtered", "held", "absorbed", "reject")
TPS = (("t", 0), ("t", 1))


@dataclass(eq=False)
class Truth:
    """What the model knows of one record copy, independently of the ledger."""

    tp: tuple[str, int]
    offset: int
    mid: str
    items: list[FakeItem] = field(default_factory=list)
    open_items: int = 0
    processed: bool = False
    rejected: bool = False
    failed: bool = False
    delivered: bool = False
    waits_for: Truth | None = None

    def done(self) -> bool:
        if not self.processed or self.open_items:
            return False
        return self.waits_for is None or self.waits_for.done()


class LedgerModel(RuleBasedStateMachine):
    """Random interleavings against the invariants in the module docstring."""

    items = Bundle("items")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = open_store("sqlite:///:memory:")
        self.log: dict[tuple[str, int], list[str]] = {tp: [] for tp in TPS}
        self.committed = dict.fromkeys(TPS, 0)
        self.finished: dict[tuple[str, int], set[int]] = {tp: set() for tp in TPS}
        self.ids = itertools.count()
        self.kept_ids: set[str] = set()  # ids some copy delivered or held, nothing failed
        self.letters = DeadLetterSink()
        self.resolved = 0  # item outcomes given
        self.start()

    def start(self) -> None:
        self.stored: dict[tuple[str, int], int] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.position: dict[tuple[str, int], int] = {}
        self.truths: dict[int, Truth] = {}  # id(record) -> truth, this incarnation
        self.by_item: dict[int, tuple[FakeItem, Truth]] = {}
        self.ledger = Ledger(
            Deduplicator(self.store), self.letters, self._store_offset, retry=QUICK
        )

    def _store_offset(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        assert tp in self.assigned, "an offset was stored for a partition not assigned"
        assert offset >= self.stored.get(tp, 0), "a stored offset went backwards"
        self.stored[tp] = offset

    def _run(self, action: Callable[[], None]) -> None:
        """Run `action` on the loop and let dead-letter writes (and their retries) finish."""

        async def go() -> None:
            action()
            await self.ledger.close(timeout=30)

        self.loop.run_until_complete(go())

    def teardown(self) -> None:
        self.loop.close()
        self.store.close()

    @initialize()
    def first_assignment(self) -> None:
        self.assign(TPS[0])

    @rule(tp=st.sampled_from(TPS), reuse=st.booleans())
    def produce(self, tp: tuple[str, int], reuse: bool) -> None:
        existing = [m for log in self.log.values() for m in log]
        self.log[tp].append(existing[-1] if reuse and existing else f"m{next(self.ids)}")

    @precondition(lambda self: len(self.assigned) < len(TPS))
    @rule(data=st.data())
    def assign_one(self, data: st.DataObject) -> None:
        self.assign(data.draw(st.sampled_from([tp for tp in TPS if tp not in self.assigned])))

    def assign(self, tp: tuple[str, int]) -> None:
        self.ledger.assign([tp])
        self.assigned.add(tp)
        self.position[tp] = self.committed[tp]

    @precondition(lambda self: self.assigned)
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(self.assigned)))
        self.ledger.revoke([tp])
        self.commit_one(tp)
        self.assigned.discard(tp)

    def commit_one(self, tp: tuple[str, int]) -> None:
        if tp in self.stored:
            self.committed[tp] = self.stored.pop(tp)

    @rule()
    def commit(self) -> None:
        for tp in sorted(self.assigned):
            self.commit_one(tp)

    @precondition(lambda self: any(self.position[tp] < len(self.log[tp]) for tp in self.assigned))
    @rule(
        target=items,
        data=st.data(),
        shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4),
        revoke_between=st.booleans(),
    )
    def fetch(self, data: st.DataObject, shapes: list[str], revoke_between: bool) -> Any:
        ready = [tp for tp in sorted(self.assigned) if self.position[tp] < len(self.log[tp])]
        tp = data.draw(st.sampled_from(ready))
        start = self.position[tp]
        mids = self.log[tp][start : start + len(shapes)]
        messages = [message(start + n, mid, tp) for n, mid in enumerate(mids)]
        stamps = self.ledger.stamp(messages)
        self.position[tp] = start + len(messages)
        if revoke_between:  # a rebalance between the fetch and its processing
            self.ledger.revoke([tp])
            self.commit_one(tp)
            self.assigned.discard(tp)
            self.assign(tp)
        records = self.ledger.begin(messages, stamps)
        assert records == [] or not revoke_between, "a stale fetch was begun"
        made: list[FakeItem] = []
        self._run(lambda: made.extend(self._process(records, shapes, tp)))
        return multiple(*made)

    def _process(
        self, records: list[Record], shapes: list[str], tp: tuple[str, int]
    ) -> list[FakeItem]:
        ledger = self.ledger
        made: list[FakeItem] = []
        for record in records:
            record.message_id = (record.value or b"").decode()
        answers = ledger._dedup.fresh(records)
        for record, shape, answer in zip(records, shapes, answers, strict=False):
            truth = Truth(tp, record.offset, record.message_id or "")
            self.truths[id(record)] = truth
            if answer is not True:
                record.message_id = None
                truth.processed = True
                if answer is False:
                    ledger.processed(record, Outcome.DUPLICATE)
                else:
                    truth.waits_for = self.truths[id(answer)]
                    ledger.wait_for(record, answer)
                continue
            if shape == "reject":
                truth.processed = truth.rejected = truth.failed = True
                ledger.reject(record, MappingError("bad input"), "map")
                continue
            count = {"items1": 1, "items2": 2}.get(shape, 0)
            for n in range(count):
                item = FakeItem([record], f"item {n}")
                record.open += 1
                truth.items.append(item)
                truth.open_items += 1
                self.by_item[id(item)] = (item, truth)
                made.append(item)
            outcome = {
                "filtered": Outcome.FILTERED,
                "held": Outcome.HELD,
                "absorbed": Outcome.ABSORBED,
            }.get(shape)
            if shape == "held":
                truth.delivered = True
            ledger.processed(record, outcome)
            truth.processed = True
        return made

    @rule(item=consumes(items))
    def deliver(self, item: FakeItem) -> None:
        if id(item) not in self.by_item:
            return  # an item of a crashed incarnation
        _, truth = self.by_item.pop(id(item))
        truth.open_items -= 1
        truth.delivered = True
        self.resolved += 1
        self.ledger.settle([item])

    @rule(item=consumes(items), outage=st.booleans())
    def dead_letter(self, item: FakeItem, outage: bool) -> None:
        if id(item) not in self.by_item:
            return
        _, truth = self.by_item.pop(id(item))
        truth.open_items -= 1
        truth.failed = True
        self.resolved += 1
        self.letters.failures = 2 if outage else 0
        self._run(lambda: self.ledger.fail([item], MappingError("refused"), "deliver"))

    @rule()
    def flush_dedup(self) -> None:
        self.ledger._dedup.flush()

    @rule()
    def crash(self) -> None:
        """Everything in memory is gone; the broker keeps its committed offsets."""
        self._collect()
        self.start()
        self.assign(TPS[0])

    def _collect(self) -> None:
        for truth in self.truths.values():
            if truth.done():
                self.finished[truth.tp].add(truth.offset)
                if truth.delivered and not truth.failed:
                    self.kept_ids.add(truth.mid)

    @invariant()
    def committed_offsets_pass_only_finished_records(self) -> None:
        self._collect()
        for tp in TPS:
            missing = set(range(self.committed[tp])) - self.finished[tp]
            assert not missing, f"committed {tp} past unfinished offsets {sorted(missing)}"

    @invariant()
    def pending_counts_the_unfinished_records(self) -> None:
        unfinished = sum(1 for t in self.truths.values() if not t.done())
        assert self.ledger.pending == unfinished >= 0

    @invariant()
    def remembered_ids_are_only_those_kept(self) -> None:
        all_ids = {m for log in self.log.values() for m in log}
        seen = self.store.seen(sorted(all_ids))
        assert seen <= self.kept_ids | {t.mid for t in self.truths.values() if t.done()}
        failed_only = {t.mid for t in self.truths.values() if t.failed and t.done()} - self.kept_ids
        assert not (seen & failed_only - {t.mid for t in self.truths.values() if t.delivered})


TestLedgerModel = LedgerModel.TestCase
