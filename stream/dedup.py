"""Dedup stage: a messageId seen before is dropped and counted, before any batch is built.

Two layers: the state store remembers delivered message ids for the dedup window (shared by
every consumer of a group with Redis, kept across restarts), and an in-process set covers ids
that are in flight (consumed, not yet delivered). An id is marked delivered only after Klaviyo
accepted it, so a crash before delivery never turns a record into a false duplicate.
One store round trip per fetched batch, not per record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from stream import metrics
from stream.state import StateStore


class Deduplicator:
    """Answers "seen before?" for a fetched batch and remembers what was delivered."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._in_flight: set[str] = set()

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
        """Klaviyo accepted these (or they are durably held): remember them for the window."""
        ids = [m for m in message_ids if m]
        if ids:
            self._store.mark_delivered(ids, time.time())
            self._in_flight.difference_update(ids)

    def abandoned(self, message_ids: Iterable[str]) -> None:
        """Not delivered (dead-lettered, filtered, revoked): a later copy may try again."""
        self._in_flight.difference_update(message_ids)
