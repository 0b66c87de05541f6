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

TopicPartition = tuple[str, int]


class _Partition:
    __slots__ = ("order", "done")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.done: set[int] = set()


class OffsetTracker:
    """Tracks in-flight offsets; `complete` returns the offset to store, if it moved."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Records consumed and not yet completed."""
        return self._pending

    def begin(self, tp: TopicPartition, offset: int) -> None:
        """A record was consumed (call in consumption order per partition)."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                part = self._parts[tp] = _Partition()
            part.order.append(offset)
            self._pending += 1

    def complete(self, tp: TopicPartition, offset: int) -> int | None:
        """A record is finished; the next offset to commit if the contiguous prefix grew."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None:  # partition revoked meanwhile: its new owner re-reads it
                return None
            part.done.add(offset)
            self._pending -= 1
            moved: int | None = None
            while part.order and part.order[0] in part.done:
                head = part.order.popleft()
                part.done.discard(head)
                moved = head + 1
            return moved

    def forget(self, tps: list[TopicPartition]) -> None:
        """Partitions were revoked or lost: drop their in-flight state."""
        with self._lock:
            for tp in tps:
                part = self._parts.pop(tp, None)
                if part is not None:
                    self._pending -= len(part.order) - len(part.done)
