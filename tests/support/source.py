"""The consumer seam in memory: topics, a consumer group's committed offsets, and members.

`Topics` holds records per partition as a broker would (offsets from 0, keys, headers) and
the group's committed offsets. `MemorySource` is one group member over it, keeping the
contract of `stream.intake.source.Source`: rebalances happen inside `fetch`, on the thread
that fetches (a revoke drains, ends the generations, then commits); offsets are stored by the
ledger and committed on every fetch (librdkafka's auto-commit, with no interval) and on
revoke and close. A test moves partitions with `assign` and `revoke`, as a rebalance would.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from typing import Any

from confluent_kafka import Message

from stream.completion.ledger import Generation, Ledger
from stream.intake.source import Drain, Partitions, TopicPartition

Headers = list[tuple[str, bytes]] | None


class Topics:
    """Partitions of records and one group's committed offsets (thread-safe)."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = {
            (topic, p): [] for topic, count in partitions.items() for p in range(count)
        }  # type: dict[TopicPartition, list[Message]]
        self.committed: dict[TopicPartition, int] = {}
        self.changed = threading.Condition()

    def produce(
        self, topic: str, value: bytes | None, key: bytes | None = None,
        headers: Headers = None, partition: int | None = None,
    ) -> int:  # fmt: skip
        """Append one record (to `partition`, else by key as Kafka's default partitioner
        would spread them: here a stable hash); returns its offset."""
        count = sum(1 for t, _ in self.partitions if t == topic)
        if partition is None:
            partition = (zlib.crc32(key) % count) if key is not None else 0
        with self.changed:
            log = self.partitions[(topic, partition)]
            offset = len(log)
            log.append(Message(
                topic=topic, partition=partition, offset=offset, key=key, value=value,
                headers=headers,
            ))  # fmt: skip
            self.changed.notify_all()
        return offset

    def high(self, tp: TopicPartition) -> int:
        return len(self.partitions[tp])


class MemorySource:
    """One member of the group over `Topics`: given all partitions of `topics` on its first
    fetch unless the test assigns them itself (`assign`, `revoke`)."""

    def __init__(
        self, topics: Topics, names: tuple[str, ...], ledger: Ledger, drain: Drain,
        assign_all: bool = True,
    ) -> None:  # fmt: skip
        self._topics = topics
        self._ledger = ledger
        self._drain = drain
        self.assigned: set[TopicPartition] = set()
        self.broker_reachable = True
        self.rebalanced = False
        self.closing = False
        self.stored: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}
        self._paused = False
        self._moves: list[tuple[str, Partitions]] = []
        if assign_all:
            self._moves.append(("assign", [tp for tp in topics.partitions if tp[0] in names]))
        self.fetches = 0

    # the test's side --------------------------------------------------------------------------

    def assign(self, partitions: Partitions) -> None:
        """These partitions come to this member at its next fetch."""
        with self._topics.changed:
            self._moves.append(("assign", list(partitions)))
            self._topics.changed.notify_all()

    def revoke(self, partitions: Partitions) -> None:
        """These partitions leave this member at its next fetch (drained first)."""
        with self._topics.changed:
            self._moves.append(("revoke", list(partitions)))
            self._topics.changed.notify_all()

    # the service's side -----------------------------------------------------------------------

    async def fetch(
        self, max_records: int, timeout: float
    ) -> tuple[list[Message], list[Generation | None]]:
        return await asyncio.to_thread(self._consume, max_records, timeout)

    def _consume(
        self, max_records: int, timeout: float
    ) -> tuple[list[Message], list[Generation | None]]:
        self.fetches += 1
        self._rebalance()
        self._commit()
        topics = self._topics
        with topics.changed:
            messages = self._take(max_records)
            if not messages and not self._moves:
                topics.changed.wait(timeout)
                messages = self._take(max_records)
        return messages, self._ledger.stamp(messages)

    def _take(self, max_records: int) -> list[Message]:
        if self._paused:
            return []
        out: list[Message] = []
        for tp in sorted(self.assigned):
            log = self._topics.partitions[tp]
            start = self._position[tp]
            taken = log[start : start + max_records - len(out)]
            self._position[tp] = start + len(taken)
            out.extend(taken)
            if len(out) >= max_records:
                break
        return out

    def _rebalance(self) -> None:
        with self._topics.changed:
            moves, self._moves = self._moves, []
        for move, partitions in moves:
            self.rebalanced = True
            if move == "assign":
                self._ledger.assign(partitions)
                self.assigned.update(partitions)
                for tp in partitions:
                    self._position[tp] = self._topics.committed.get(tp, 0)
            else:
                gone = [tp for tp in partitions if tp in self.assigned]
                if not self.closing:
                    self._drain(gone)
                self._ledger.revoke(gone)
                self._commit()
                self.assigned.difference_update(gone)
                for tp in gone:
                    self.stored.pop(tp, None)

    def _commit(self) -> None:
        for tp, offset in list(self.stored.items()):
            if tp in self.assigned:
                self._topics.committed[tp] = offset

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def catalog_paused(self) -> bool:
        return False

    def pause_catalog(self, paused: bool) -> None:
        pass

    def store(self, topic: str, partition: int, next_offset: int) -> None:
        if (topic, partition) in self.assigned:
            self.stored[(topic, partition)] = next_offset

    async def commit(self) -> None:
        self._commit()

    async def close(self) -> None:
        self._commit()
        self._ledger.revoke(list(self.assigned))
        self.assigned.clear()

    async def probe(self, timeout: float = 5.0) -> bool:
        return True

    def group_size(self, timeout: float = 10.0) -> int | None:
        return 1

    async def lag(self) -> dict[TopicPartition, int]:
        return {tp: self._topics.high(tp) - self._position[tp] for tp in self.assigned}

    async def committed_lag(self) -> dict[TopicPartition, int]:
        committed = self._topics.committed
        return {
            tp: self._topics.high(tp) - committed[tp] for tp in self.assigned if tp in committed
        }


def memory_source(topics: Topics, names: tuple[str, ...], **options: Any) -> Any:
    """A `SourceFactory` for `Service(source=...)`: each run gets a member over `topics`
    (`.made` keeps them, for the test to move partitions)."""
    made: list[MemorySource] = []

    def factory(ledger: Ledger, drain: Drain) -> MemorySource:
        source = MemorySource(topics, names, ledger, drain, **options)
        made.append(source)
        return source

    factory.made = made  # type: ignore[attr-defined]
    return factory
