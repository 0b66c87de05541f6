"""Finish stage: the completion ledger, the one place that decides what finishing a record means.

A consumed record becomes zero or more *items*, one Klaviyo action each (an event, a profile
upsert, and so on). Every item ends with exactly one `Outcome`; a record without items ends with
one of its own (filtered, a duplicate, absorbed into the identity graph, held). A record is
finished when it was processed and all of its items have an outcome. Finishing, in this order:

1. the dead letters of its failed items (or of the record itself) are acknowledged by the broker,
   retried for as long as that takes (the record waits, it is never dropped);
2. the dedup stage remembers its message id when something was delivered or held and nothing
   was dead-lettered or cancelled (a dead-lettered item stays replayable, a cancelled one is
   sent by the partition's next reading); otherwise it forgets it;
3. its partition's offset moves past it once every earlier record of its generation is
   finished (out-of-order completion, one stored offset per partition).

Generations: `assign` starts one per partition, `revoke` ends it. Records are stamped with the
generation they were fetched in; a record of an ended generation is never begun, and one begun
before the revoke still finishes (its dead letters are written, its delivered id remembered)
but never moves an offset: the partition's next owner reads it again. A copy of a message id that
is still in flight is not dropped as a duplicate: it waits for the original and finishes with it.
A released held call (no Kafka position) names its state-store entry, which is deleted once the
call is finished.

Accounts (`stream.accounts`): a routed record carries its account, whose dedup window its message
id goes to (`dedups`); a record going to several accounts finishes through one copy per account
(`fan_out`), and its offset moves only once every copy has finished.

Thread-safety: records and items belong to the event loop; generations are shared with the
consume thread (rebalance callbacks) under one lock, and `wait_drained` blocks that thread
until a revoked partition's work is done. librdkafka is never called under that lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Protocol

from confluent_kafka import Message

from stream.completion.deadletter import DeadLetter
from stream.completion.dedup import Deduplicator
from stream.core.calls import Record
from stream.core.errors import DeadLetterUnavailable, Unavailable
from stream.core.retry import DEFAULT as DEFAULT_RETRY
from stream.core.retry import RetryPolicy, until_available
from stream.telemetry import metrics

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
StoreOffset = Callable[[str, int, int], None]


class Outcome(StrEnum):
    """How an item (or a record without items) ended."""

    DELIVERED = "delivered"  # Klaviyo accepted it
    HELD = "held"  # durably held in the state store until its person is named
    FILTERED = "filtered"  # routing, integrations or a rule said: not for Klaviyo
    DUPLICATE = "duplicate"  # its message id was delivered before, or is in flight
    ABSORBED = "absorbed"  # it only fed the identity graph (alias, anonymous identify)
    DEAD_LETTERED = "dead_lettered"  # in the dead-letter topic with its reason
    CANCELLED = "cancelled"  # its partition moved on (past the drain): its next owner sends it
    SUPERSEDED = "superseded"  # a newer version of its catalog resource took its place


class DeadLetterWriter(Protocol):
    """Writes one dead letter and returns once the broker acknowledged it (`DeadLetters`)."""

    async def send(self, letter: DeadLetter) -> None: ...

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued; no more writes after it."""


class Item(Protocol):
    """What the ledger needs of an item: the records it carries and a name for its dead letter."""

    @property
    def records(self) -> list[Record]: ...

    @property
    def label(self) -> str | None: ...


class Generation:
    """One partition's assignment: the offsets begun in it, in fetch order."""

    __slots__ = ("tp", "order", "done", "ended", "moved_at", "assigned_at", "begun", "quiet_until")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.order: deque[int] = deque()
        self.done: set[int] = set()
        self.ended = False
        self.moved_at = time.monotonic()  # the offset last moved (or work began after idling)
        self.assigned_at = self.moved_at
        self.begun = False  # a record of it was begun
        # until then its consent and deletion actions wait: the previous owner's requests
        # (cut off at the drain bound) may still land until then (set by the service)
        self.quiet_until = 0.0

    @property
    def unfinished(self) -> int:
        return len(self.order) - len(self.done)


class Ledger:
    """Owns every record from fetch to finish: outcomes, dead letters, dedup marks, offsets."""

    def __init__(
        self,
        dedup: Deduplicator,
        dead_letters: DeadLetterWriter | None,
        store_offset: StoreOffset,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry: RetryPolicy = DEFAULT_RETRY,
        dedups: Mapping[str, Deduplicator] | None = None,
    ) -> None:
        self._dedup = dedup  # the records without an account's (a single account's)
        self._dedups = dedups or {}  # account name -> its dedup window
        self._retry = retry
        self._dead_letters = dead_letters
        self._store_offset = store_offset
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._current: dict[TopicPartition, Generation] = {}
        self._pending = 0
        self._writes: set[asyncio.Task[None]] = set()
        # released held calls finished (delete their entries), and being delivered here; by
        # account (each account's entries are in its own store)
        self._held_done: dict[str | None, list[str]] = {}
        self._held_open: set[tuple[str | None, str]] = set()
        self.dead_lettered = 0

    # generations (consume thread) ---------------------------------------------------------

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions were assigned: each starts a new generation."""
        with self._lock:
            for tp in tps:
                old = self._current.get(tp)
                if old is not None:
                    old.ended = True
                self._current[tp] = Generation(tp)

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions were revoked or lost: their generations end. Work still in flight for
        them finishes but never moves an offset."""
        with self._lock:
            for tp in tps:
                gen = self._current.pop(tp, None)
                if gen is not None:
                    gen.ended = True
            self._changed.notify_all()

    def stamp(self, messages: Sequence[Message]) -> list[Generation | None]:
        """The current generation of each message's partition. Call it on the consume thread
        right after the fetch: rebalance callbacks run inside the fetch on that thread, so the
        stamp says which assignment the records were fetched under."""
        with self._lock:
            current = self._current
            return [current.get((m.topic() or "", m.partition() or 0)) for m in messages]

    def unfinished(self, tps: Iterable[TopicPartition]) -> int:
        """Records of these partitions' current generations not yet finished."""
        with self._lock:
            return sum(g.unfinished for tp in tps if (g := self._current.get(tp)) is not None)

    def wait_drained(self, tps: Sequence[TopicPartition], timeout: float) -> bool:
        """Block (consume thread) until these partitions' records are all finished, or
        `timeout` seconds; True when drained."""

        def drained() -> bool:
            return all(g.unfinished == 0 for tp in tps if (g := self._current.get(tp)) is not None)

        with self._changed:
            return self._changed.wait_for(drained, timeout)

    # the loop's calls -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records begun (or released from the store) and not yet finished."""
        return self._pending

    def begin(
        self, messages: Sequence[Message], stamps: Sequence[Generation | None]
    ) -> list[Record]:
        """Records for fetched messages, tracked from now on. A message whose generation has
        ended since the fetch is left out: the partition's next owner reads it again."""
        records: list[Record] = []
        with self._lock:
            for message, gen in zip(messages, stamps, strict=True):
                if message.error() is not None:
                    log.warning("consume error", extra={"error": str(message.error())})
                    continue
                if gen is None or gen.ended:
                    metrics.STALE_RECORDS.inc()
                    continue
                offset: int = message.offset()  # type: ignore[assignment]
                if not gen.order or gen.unfinished == 0:
                    gen.moved_at = self._clock()  # work begins after idling: not stalled
                gen.order.append(offset)
                headers = message.headers()
                records.append(
                    Record(
                        gen.tp[0],
                        gen.tp[1],
                        offset,
                        message.key(),
                        message.value(),  # type: ignore[arg-type]
                        list(headers.items()) if isinstance(headers, dict) else headers,
                        gen,
                    )
                )
            self._pending += len(records)
        return records

    def newly_assigned(self, records: Sequence[Record]) -> list[Generation]:
        """The generations these (just begun) records are the first of (then marked begun):
        what a new owner reads first is judged against the newest deletions."""
        fresh: list[Generation] = []
        for record in records:
            gen = record.generation
            if isinstance(gen, Generation) and not gen.begun:
                gen.begun = True
                fresh.append(gen)
        return fresh

    def adopt(self, record: Record) -> None:
        """Track a record without a Kafka position (a held call released from the store); its
        one open count stands for its one item."""
        if record.held_id is not None:
            self._held_open.add((record.account, record.held_id))
        with self._lock:
            self._pending += 1

    @staticmethod
    def fan_out(record: Record, accounts: Sequence[str]) -> list[Record]:
        """One copy of `record` per account, each finished on its own (processed, its items
        settled); `record` stands for them all from now on and finishes (its offset may move)
        once every copy has. Its processing token becomes the copies' open counts."""
        copies = [
            Record(
                record.topic, record.partition, record.offset, record.key, record.value,
                record.headers, record.generation, account=name, parent=record,
            )  # fmt: skip
            for name in accounts
        ]
        record.open += len(copies) - 1
        return copies

    @staticmethod
    def expect(record: Record, count: int = 1) -> None:
        """`count` more things must end before `record` finishes: its items and actions,
        a deletion's confirmation, its processing again. Each ends in `settle`, `fail` or
        `processed`."""
        record.open += count

    def has_held(self, held_id: str, account: str | None = None) -> bool:
        """Whether this released held call (of `account`'s store) is being delivered here."""
        return (account, held_id) in self._held_open

    def processed(self, record: Record, outcome: Outcome | None = None) -> None:
        """The record went through the per-record stages; `outcome` when it made no item."""
        if outcome is not None:
            metrics.OUTCOMES.labels(outcome).inc()
            if outcome is Outcome.HELD:
                record.delivered = True  # durably held: its message id is done with
        self._release([record])

    def wait_for(self, copy: Record, original: Record) -> None:
        """`copy` carries a message id that `original` has in flight: it finishes, as a
        duplicate, when the original finishes (whatever the original's outcome), or now if the
        original finished meanwhile (a copy within one fetch, after an alias, say)."""
        if original.open <= 0:
            self.processed(copy, Outcome.DUPLICATE)
            return
        if original.waiting is None:
            original.waiting = [copy]
        else:
            original.waiting.append(copy)

    def settle(self, items: Sequence[Item], outcome: Outcome = Outcome.DELIVERED) -> None:
        """These items ended with `outcome` (not a dead letter: see `fail`)."""
        metrics.OUTCOMES.labels(outcome).inc(len(items))
        records = [r for item in items for r in item.records]
        if outcome is Outcome.DELIVERED or outcome is Outcome.HELD:
            for r in records:
                r.delivered = True
        elif outcome is Outcome.CANCELLED:  # its next reading sends it: never remembered
            for r in records:
                r.failed = True
        self._release(records)

    def fail(
        self,
        items: Sequence[Item],
        error: BaseException,
        stage: str,
    ) -> None:
        """These items cannot be sent: each of their records gets a dead letter naming the
        item; the records finish once the broker acknowledged it."""
        metrics.OUTCOMES.labels(Outcome.DEAD_LETTERED).inc(len(items))
        for item in items:
            for record in item.records:
                self._spawn_dead_letter(DeadLetter.of(record, error, stage, item.label))

    def reject(self, record: Record, error: BaseException, stage: str) -> None:
        """The record itself cannot be processed (bad input): dead-letter it, then finish it."""
        metrics.OUTCOMES.labels(Outcome.DEAD_LETTERED).inc()
        self._spawn_dead_letter(DeadLetter.of(record, error, stage))

    # finishing --------------------------------------------------------------------------------

    def _spawn_dead_letter(self, letter: DeadLetter) -> None:
        record, error = letter.record, letter.error
        metrics.DEAD_LETTERS.labels(letter.stage, type(error).__name__).inc()
        log.warning(
            "dead-lettered",
            extra={
                "stage": letter.stage,
                "error": str(error)[:500],
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                **({"item": letter.item} if letter.item else {}),
            },
        )
        record.failed = True
        task = asyncio.get_running_loop().create_task(self._dead_letter(letter))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _dead_letter(self, letter: DeadLetter) -> None:
        dead_letters = self._dead_letters
        if dead_letters is not None:

            async def write() -> None:
                try:
                    await dead_letters.send(letter)
                except (Unavailable, asyncio.CancelledError):
                    raise
                except Exception as exc:  # never lose the record to a bug: keep trying
                    log.exception("dead-letter write failed unexpectedly")
                    raise DeadLetterUnavailable(f"{type(exc).__name__}: {exc}") from exc

            await until_available(write, "dead-letter topic", self._retry)
        self.dead_lettered += 1
        self._release([letter.record])

    def _release(self, records: Iterable[Record]) -> None:
        """One thing that had to happen to each record happened; finish those with none left."""
        finished: list[Record] = []
        for r in records:
            r.open -= 1
            if r.open == 0:
                finished.append(r)
        while finished:
            copies: list[Record] = []
            self._finish(finished, copies)
            metrics.OUTCOMES.labels(Outcome.DUPLICATE).inc(len(copies))
            finished = []
            for copy in copies:
                copy.open -= 1
                if copy.open == 0:
                    finished.append(copy)

    def _finish(self, records: list[Record], copies: list[Record]) -> None:
        accounts = {r.account for r in records} if self._dedups else ()
        if len(accounts) > 1:  # each account's message ids to its own dedup window
            for account in accounts:
                self._remember([r for r in records if r.account == account], copies)
        else:
            self._remember(records, copies)
        moved: dict[Generation, int] = {}
        parents: list[Record] = []
        with self._lock:
            for r in records:
                if r.parent is not None:  # an account's copy: its record finishes with the last
                    parents.append(r.parent)
                    continue
                self._pending -= 1
                gen = r.generation
                if not isinstance(gen, Generation):
                    continue
                gen.done.add(r.offset)
                order, done = gen.order, gen.done
                while order and order[0] in done:
                    head = order.popleft()
                    done.discard(head)
                    moved[gen] = head + 1
            now = self._clock()
            for gen in moved:
                gen.moved_at = now
            self._changed.notify_all()
        # librdkafka is called outside the lock: a revoke callback waiting on it holds
        # librdkafka's own locks. Storing an offset of a generation that ended meanwhile is
        # harmless: every record below it is finished (for a partition no longer ours, the
        # store is refused).
        for gen, next_offset in moved.items():
            if not gen.ended:
                self._store_offset(gen.tp[0], gen.tp[1], next_offset)
        if parents:
            self._release(parents)

    def _remember(self, records: list[Record], copies: list[Record]) -> None:
        """Finished records of one account: their message ids kept or forgotten in its dedup
        window, their waiting copies due, their released held entries to delete."""
        account = records[0].account
        dedup = self._dedup if account is None else self._dedups.get(account, self._dedup)
        kept: list[str] = []
        forgotten: list[str] = []
        refused: list[str] = []
        for r in records:
            if r.message_id is not None:
                (kept if r.delivered and not r.failed else forgotten).append(r.message_id)
                if r.failed and r.held_id is not None:  # remembered when it was held
                    refused.append(r.message_id)
            if r.waiting:
                copies.extend(r.waiting)
                r.waiting = None
            if r.held_id is not None:
                self._held_open.discard((account, r.held_id))
                self._held_done.setdefault(account, []).append(r.held_id)
        if kept:
            dedup.delivered(kept)
        if forgotten:
            dedup.abandoned(forgotten)
        if refused:
            self._unmark(dedup, refused)

    def _unmark(self, dedup: Deduplicator, message_ids: list[str]) -> None:
        """Forget refused released calls in the dedup store, retried until the store answers
        (their records are finished already: the write goes on in the background)."""

        async def forget() -> None:
            await until_available(lambda: dedup.refused(message_ids), "state store")

        task = asyncio.get_running_loop().create_task(forget())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # housekeeping ------------------------------------------------------------------------------

    def take_finished_held(self, account: str | None = None) -> list[str]:
        """Entry ids of released held calls of `account` that finished (to delete from its
        state store)."""
        return self._held_done.pop(account, [])

    def return_finished_held(self, entry_ids: list[str], account: str | None = None) -> None:
        """The deletion failed: keep them for the next try."""
        self._held_done[account] = entry_ids + self._held_done.get(account, [])

    def stalled(self) -> dict[TopicPartition, float]:
        """Per current partition with unfinished records: seconds since its offset last moved."""
        now = self._clock()
        with self._lock:
            return {tp: now - gen.moved_at for tp, gen in self._current.items() if gen.unfinished}

    async def close(self, timeout: float) -> None:
        """Wait (bounded) for dead letters still being written."""
        if self._writes:
            _done, pending = await asyncio.wait(set(self._writes), timeout=timeout)
            for task in pending:
                task.cancel()


def ended(item: Item) -> bool:
    """Whether every record of an item belongs to a partition generation that has ended (a
    revoke past the drain bound): nothing more is attempted for it here."""
    return all(isinstance(r.generation, Generation) and r.generation.ended for r in item.records)
