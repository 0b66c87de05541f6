"""Ack stage: a per-partition offset tracker for out-of-order completion.

Records of one partition finish in any order (batches to different endpoints, retries), but
Kafka keeps one committed offset per partition. An offset is stored only when every earlier
record of that partition is delivered, filtered or dead-lettered: after a crash, nothing
unfinished lies below the committed offset. Thread-safe: rebalance callbacks run on the
consumer's thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Protocol

TopicPartition = tuple[str, int]


class Record(Protocol):
    """Where a record sits in Kafka (`calls.Source` is one)."""

    topic: str
    partition: int
    offset: int


class _Partition:
    __slots__ = ("order", "done")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.done: set[int] = set()


class OffsetTracker:
    """Tracks in-flight offsets; `complete` returns the offsets to store, where they moved.

    Both calls take many records at once (a fetch, a delivered batch): one lock per call."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Records consumed and not yet completed."""
        return self._pending

    def begin(self, records: Iterable[Record]) -> None:
        """Records were consumed (in consumption order per partition)."""
        with self._lock:
            parts = self._parts
            for r in records:
                tp = (r.topic, r.partition)
                part = parts.get(tp)
                if part is None:
                    part = parts[tp] = _Partition()
                part.order.append(r.offset)
                self._pending += 1

    def complete(self, records: Iterable[Record]) -> dict[TopicPartition, int]:
        """Records are finished; per partition whose contiguous finished prefix grew, the next
        offset to commit."""
        moved: dict[TopicPartition, int] = {}
        with self._lock:
            parts = self._parts
            touched: set[TopicPartition] = set()
            for r in records:
                tp = (r.topic, r.partition)
                part = parts.get(tp)
                if part is None:  # partition revoked meanwhile: its new owner re-reads it
                    continue
                part.done.add(r.offset)
                self._pending -= 1
                touched.add(tp)
            for tp in touched:
                part = parts[tp]
                order, done = part.order, part.done
                while order and order[0] in done:
                    head = order.popleft()
                    done.discard(head)
                    moved[tp] = head + 1
        return moved

    def forget(self, tps: list[TopicPartition]) -> None:
        """Partitions were revoked or lost: drop their in-flight state."""
        with self._lock:
            for tp in tps:
                part = self._parts.pop(tp, None)
                if part is not None:
                    self._pending -= len(part.order) - len(part.done)
