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

from stream.core.calls import Record
from stream.state import StateStore
from stream.telemetry import metrics

FLUSH_IDS = 20_000
FLUSH_SECONDS = 1.0


class Deduplicator:
    """Answers "seen before?" for a fetched batch and remembers what was delivered.

    `fresh` says, per record: new (its id is now in flight, owned by that record), seen (the
    store or this process knows it as delivered: drop it), or the record that has it in flight
    (the ledger makes the copy wait for it). An owner of a partition generation that has ended
    (revoked or lost, then given back to this replica) is not waited for: its items are
    cancelled when taken, so the copy read now owns the id and goes (sent twice at worst,
    which Klaviyo's `unique_id` absorbs). Marking never touches the store: `flush` does, and a
    failed flush keeps the ids for the next one."""

    def __init__(
        self,
        store: StateStore,
        flush_ids: int = FLUSH_IDS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._store = store
        # in flight here: the owning record, or None once delivered and waiting for the flush
        self._in_flight: dict[str, Record | None] = {}
        self._delivered: list[str] = []  # accepted by Klaviyo, not yet written to the store
        self._oldest = 0.0  # monotonic time of the oldest unwritten id
        self._flush_ids = flush_ids
        self._flush_seconds = flush_seconds

    def fresh(self, records: Sequence[Record]) -> list[Record | bool]:
        """Per record (each with its `message_id`): True if it is new, False if it was
        delivered before, or the record that has it in flight. Raises `StateError` (nothing
        changed) when the store cannot answer."""
        ids = [r.message_id for r in records]
        delivered = self._store.seen(ids) if ids else set()  # type: ignore[arg-type]
        in_flight = self._in_flight
        out: list[Record | bool] = []
        for record, mid in zip(records, ids, strict=True):
            assert mid is not None
            if mid in delivered:
                out.append(False)
            elif mid in in_flight and not _ended(owner := in_flight[mid]):
                out.append(False if owner is None else owner)
            else:
                in_flight[mid] = record
                out.append(True)
        duplicates = sum(1 for x in out if x is not True)
        if duplicates:
            metrics.RECORDS_DEDUPLICATED.inc(duplicates)
        return out

    def delivered(self, message_ids: Iterable[str]) -> None:
        """Klaviyo accepted these (or they are durably held): remembered from the next flush."""
        ids = list(message_ids)
        if not ids:
            return
        if not self._delivered:
            self._oldest = time.monotonic()
        self._delivered += ids
        for mid in ids:
            self._in_flight[mid] = None

    def abandoned(self, message_ids: Iterable[str]) -> None:
        """Not delivered (dead-lettered, filtered, absorbed): a later copy may try again."""
        in_flight = self._in_flight
        for mid in message_ids:
            in_flight.pop(mid, None)

    def refused(self, message_ids: Iterable[str]) -> None:
        """Released held calls Klaviyo refused: remembered when they were held, forgotten now
        (here and in the store) so that their replay is not dropped as a duplicate. Raises
        `StateError` when the store cannot forget them."""
        ids = set(message_ids)
        if not ids:
            return
        self._delivered = [m for m in self._delivered if m not in ids]
        for mid in ids:
            self._in_flight.pop(mid, None)
        self._store.unmark(sorted(ids))

    def flush_due(self) -> bool:
        """Whether the unwritten ids should be written now (by count or by age)."""
        return bool(self._delivered) and (
            len(self._delivered) >= self._flush_ids
            or time.monotonic() - self._oldest >= self._flush_seconds
        )

    def flush(self) -> None:
        """Write the delivered ids to the store (sorted: neighbouring index pages together).
        Raises `StateError` with the ids kept for the next try."""
        if not self._delivered:
            return
        ids, self._delivered = self._delivered, []
        try:
            self._store.mark_delivered(sorted(set(ids)), time.time())
        except BaseException:
            self._delivered = ids + self._delivered  # kept for the next try
            raise
        in_flight = self._in_flight
        for mid in ids:
            if in_flight.get(mid, 0) is None:  # not taken again meanwhile
                del in_flight[mid]

    @property
    def unwritten(self) -> int:
        """Delivered ids waiting for the next flush."""
        return len(self._delivered)


def _ended(owner: Record | None) -> bool:
    """Whether the record owning an id in flight was read in a generation that has ended (see
    `stream.completion.ledger.Generation`; the ledger imports this module)."""
    return owner is not None and bool(getattr(owner.generation, "ended", False))
