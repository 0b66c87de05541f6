"""Dedup stage: a messageId seen before is dropped and counted, before any batch is built.

Two layers: the state store remembers delivered message ids for the dedup window (shared by
every consumer of a group with Redis, kept across restarts), and an in-process set covers ids
that are in flight (consumed, not yet recorded as delivered). An id is marked delivered only
after Klaviyo accepted it, so a crash before delivery never turns a record into a false
duplicate. One store round trip per fetched batch for lookups; delivered ids are written in
large flushes (every `flush_ids` ids or `flush_seconds`, and at shutdown): random message ids
land all over the store's index, and one write of 20,000 costs about half as much per id as
twenty writes of 1,000 (`bench/README.md`). Until flushed they stay in the in-process set, so
this process still drops their duplicates; a crash loses only the marks, and the replayed
records are refused by Klaviyo's `unique_id`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from stream import metrics
from stream.state import StateStore

FLUSH_IDS = 20_000
FLUSH_SECONDS = 1.0


class Deduplicator:
    """Answers "seen before?" for a fetched batch and remembers what was delivered."""

    def __init__(
        self,
        store: StateStore,
        flush_ids: int = FLUSH_IDS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._store = store
        self._in_flight: set[str] = set()
        self._delivered: list[str] = []  # accepted by Klaviyo, not yet written to the store
        self._oldest = 0.0  # monotonic time of the oldest unwritten id
        self._flush_ids = flush_ids
        self._flush_seconds = flush_seconds

    def fresh(self, message_ids: Sequence[str]) -> list[bool]:
        """Per id: True if it is new. Duplicates (earlier or within this batch) are counted."""
        delivered = self._store.seen(message_ids) if message_ids else set()
        out: list[bool] = []
        for mid in message_ids:
            new = mid not in delivered and mid not in self._in_flight
            if new:
                self._in_flight.add(mid)
            else:
                metrics.RECORDS_DEDUPLICATED.inc()
            out.append(new)
        return out

    def delivered(self, message_ids: Iterable[str]) -> None:
        """Klaviyo accepted these (or they are durably held): remembered from the next flush."""
        ids = [m for m in message_ids if m]
        if not ids:
            return
        if not self._delivered:
            self._oldest = time.monotonic()
        self._delivered += ids
        if len(self._delivered) >= self._flush_ids:
            self.flush()

    def flush_due(self) -> None:
        """Flush if the oldest unwritten id has waited `flush_seconds` (call it often)."""
        if self._delivered and time.monotonic() - self._oldest >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the delivered ids to the store (sorted: neighbouring index pages together)."""
        if not self._delivered:
            return
        ids, self._delivered = self._delivered, []
        try:
            self._store.mark_delivered(sorted(ids), time.time())
        except BaseException:
            self._delivered = ids + self._delivered  # kept for the next try
            raise
        self._in_flight.difference_update(ids)

    def abandoned(self, message_ids: Iterable[str]) -> None:
        """Not delivered (dead-lettered, filtered, revoked): a later copy may try again."""
        self._in_flight.difference_update(message_ids)
