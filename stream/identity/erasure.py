"""Erasure: a `delete` call forgets its person, and nothing older than it brings them back.

`forget` erases in the state store, in one atomic step, the person the delete call resolves to
under the identity rules (`stream.state.rules.plan_erasure`: never the owner of a shared or
moved identifier the call also names; those are counted and logged without their value),
with tombstones for their identifiers (hash, time, mark, erasure, position) and an erasure entry
(the identifiers, kept PENDING until Klaviyo has the deletion confirmed, FAILED and kept for a
bounded time when its deletion was dead-lettered). The deletion's time is the earlier of the
delete call's time and the moment it was read.

A call is then judged against the tombstones of what it names (`check`, `stream.identity.
tombstones.older`): older than a deletion, it is dropped (a re-read, a replay, a late producer);
newer, it is a new person, and while that deletion is still PENDING anywhere in the group the
call waits for it (else it would land on the profile being deleted, or be deleted by its
confirmation). The same rule guards the store's link (`guard`), so a replica that learns of a
deletion late still cannot link an older call back into the graph, and the send stage's
`late` check catches work begun before a deletion this replica learnt of since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from stream.core.calls import Call, Record
from stream.core.identifiers import Identifiers
from stream.core.timing import order_time
from stream.identity.resolver import IdentityResolver, graph_identifiers
from stream.identity.tombstones import Tombstones, older
from stream.klaviyo.mapping import wants_backfill
from stream.state import Identifier, Kind, StateStore
from stream.state.base import Forgotten, Guard, Position, Tombstone, tombstone_hash
from stream.telemetry import metrics

log = logging.getLogger(__name__)

ERASURE_KEEP_SECONDS = 7 * 86400.0  # a failed erasure's identifiers kept for its replay
KIND_OF_ATTRIBUTE: dict[str, Kind] = {
    "email": "email", "phone_number": "phone", "external_id": "external_id",
    "anonymous_id": "anonymous_id",
}  # fmt: skip


@dataclass(slots=True)
class Verdict:
    """How a call stands against the deletions of what it names: `older` than one (drop it),
    or newer and waiting for these PENDING erasures (`waits`); `without_anonymous_id` when only
    its anonymousId went with an older deletion while it names someone no deletion erased
    (another person on a shared browser): it goes on without that anonymousId."""

    older: bool = False
    waits: tuple[str, ...] = ()
    without_anonymous_id: bool = False


@dataclass(slots=True)
class Caught:
    """Work begun before a deletion this replica learnt of since: records older than it (to
    drop) and newer ones (to process again once those erasures are done)."""

    older: list[Record] = field(default_factory=list)
    newer: list[Record] = field(default_factory=list)
    waits: set[str] = field(default_factory=set)


def position_of(record: Record) -> Position | None:
    """Where a record sits in Kafka (a held call's: its original record's)."""
    return (record.topic, record.partition, record.offset) if record.topic else None


class Erasure:
    """Deletions and the group's tombstones, as this replica applies and follows them."""

    def __init__(
        self,
        store: StateStore,
        identity: IdentityResolver,
        *,
        max_skew: float = 600.0,
        keep_failed: float = ERASURE_KEEP_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._identity = identity
        self._max_skew = max_skew
        self._keep_failed = keep_failed
        self._clock = clock
        self.tombstones = Tombstones(store)
        self._open: set[str] = set()  # erasures PENDING in the group, as last read (and ours)

    # following the group ------------------------------------------------------------------

    def load(self) -> None:
        """At start: every tombstone into the filter, the PENDING erasures."""
        self.tombstones.load()
        self._open = self._store.open_erasures()

    def refresh(self) -> None:
        """Read new tombstones and the PENDING erasures (`StateError` when the store is down);
        new tombstones clear the identity caches (a person they name may be cached)."""
        if self.tombstones.refresh():
            self._identity.forget_cached()
        self._open = self._store.open_erasures()

    @property
    def mark(self) -> int:
        """The newest tombstone mark this replica has read: work begun now is judged against
        every deletion up to it (a record's `stamp`)."""
        return self.tombstones.mark

    def is_open(self, erasure_id: str) -> bool:
        return erasure_id in self._open

    @property
    def open(self) -> set[str]:
        return set(self._open)

    @property
    def has_open(self) -> bool:
        """Whether an erasure is under way in the group (as last read)."""
        return bool(self._open)

    # judging calls ----------------------------------------------------------------------------

    def called_at(self, call: Call) -> float:
        """The call's time for ordering (capped at now plus the allowed skew)."""
        return order_time(call, self._clock(), self._max_skew)

    def check(self, call: Call, ids: Identifiers, record: Record) -> Verdict:
        """Judge a call (its time checked) against the deletions of what it names. A call older
        than a deletion is dropped, unless that deletion erased only its anonymousId (a delete
        call naming a shared browser nobody owned yet) and it names someone by a userId, email
        or phone no older deletion erased: it goes on without the anonymousId."""
        rows = self.tombstones.of(_named(call, ids))
        if not rows:
            return Verdict()
        when, where = self.called_at(call), position_of(record)
        historical = wants_backfill(record.headers)
        gone = {h for h, tomb in rows.items() if older(tomb, when, where, historical)}
        anonymous = tombstone_hash(("anonymous_id", ids.anonymous_id)) if ids.anonymous_id else ""
        stripped = ids.named and gone == {anonymous}
        if gone and not stripped:
            metrics.RECORDS_TOMBSTONED.inc()
            return Verdict(older=True)
        waits = {tomb.erasure for h, tomb in rows.items() if tomb.erasure in self._open
                 and h not in gone}  # fmt: skip
        return Verdict(waits=tuple(sorted(waits)), without_anonymous_id=stripped)

    def pending(self, identifiers: Sequence[Identifier]) -> tuple[str, ...]:
        """The erasures still under way that removed any of these identifiers (a profile's):
        work sent on that profile waits for them (the person came back meanwhile)."""
        if not self._open or not identifiers:
            return ()
        rows = self.tombstones.rows([tombstone_hash(ident) for ident in identifiers])
        return tuple(sorted({t.erasure for t in rows.values() if t.erasure in self._open}))

    def guard(self, call: Call, record: Record) -> Guard:
        """The same judgement inside the store's link (see `StateStore.link`)."""
        when, where = self.called_at(call), position_of(record)
        historical = wants_backfill(record.headers)

        def refuse(rows: Mapping[str, Tombstone]) -> bool:
            return any(older(tomb, when, where, historical) for tomb in rows.values())

        return refuse

    def late(
        self, records: Sequence[Record], identifiers: Sequence[Identifier], mark: int,
        stamp: int,
    ) -> Caught | None:
        """Work about to leave, made under tombstone mark `stamp`, before a deletion (up to
        `mark`) of one of these identifiers: which of its records are older than it (drop) and
        which newer (process again after it); None when nothing was deleted since."""
        if stamp >= mark or not identifiers:
            return None
        rows = self.tombstones.of(identifiers)
        newer_rows = [tomb for tomb in rows.values() if stamp < tomb.seq <= mark]
        if not newer_rows:
            return None
        caught = Caught()
        for record in records:
            where, historical = position_of(record), wants_backfill(record.headers)
            if any(older(t, record.called_at, where, historical) for t in newer_rows):
                caught.older.append(record)
            else:
                caught.newer.append(record)
        caught.waits = {t.erasure for t in newer_rows if t.erasure in self._open}
        metrics.RECORDS_TOMBSTONED.inc(len(caught.older))
        return caught

    # deletions --------------------------------------------------------------------------------

    def forget(self, call: Call, identifiers: Sequence[Identifier], record: Record) -> Forgotten:
        """Erase the person the delete call resolves to, as of the deletion's time."""
        read_at = self._clock()
        deleted_at = min(order_time(call, read_at, self._max_skew), read_at)
        where = position_of(record) if record.generation is not None else None
        forgotten = self._store.forget(identifiers, deleted_at, call.message_id, where)
        # read up to (and past) this deletion's own mark now: work begun from here on is
        # judged against it and every one before it, so its stamp says so
        self.tombstones.refresh()
        self._identity.forget_cached()
        if forgotten.identifiers:
            self._open.add(call.message_id)
        if not forgotten.again:
            metrics.FORGOTTEN.labels("persons").inc(forgotten.persons)
            metrics.FORGOTTEN.labels("identifiers").inc(len(forgotten.identifiers))
            metrics.FORGOTTEN.labels("held_calls").inc(forgotten.held)
            if forgotten.others:
                metrics.ERASURE_LEFT_WITH_OTHERS.inc(forgotten.others)
                log.warning(
                    "a delete call names identifiers that belong to someone else: left with"
                    " them, not deleted at Klaviyo (the requester's data may be on that"
                    " profile: the operator decides)",
                    extra={"erasure": call.message_id, "identifiers": forgotten.others},
                )
        return forgotten

    def reopen(self, erasure_id: str) -> Forgotten | None:
        """A deletion sent again from its entry (a replayed dead letter without identifiers);
        None when the entry is gone."""
        forgotten = self._store.reopen_erasure(erasure_id)
        if forgotten is not None:
            self._open.add(erasure_id)
        return forgotten

    def settle(self, erasure_id: str) -> None:
        """Klaviyo has the deletion, confirmed: the entry goes (a store write)."""
        self._store.settle_erasure(erasure_id)
        self._open.discard(erasure_id)

    def fail(self, erasure_id: str) -> None:
        """Its deletion was dead-lettered: the entry stays (FAILED) for a replay, for at most
        the keep time; calls newer than it no longer wait for it."""
        self._store.fail_erasure(erasure_id)
        self._open.discard(erasure_id)

    def purge(self) -> int:
        """Forget FAILED erasure entries older than the keep time (housekeeping)."""
        return self._store.purge_erasures(self._clock() - self._keep_failed)


def _named(call: Call, ids: Identifiers) -> list[Identifier]:
    """Every identifier a call names (an alias's previous id too)."""
    names = graph_identifiers(ids)
    if call.previous_id:
        names.append(("anonymous_id", call.previous_id))
    return names


def profile_identifiers(profile: Mapping[str, object]) -> list[Identifier]:
    """The identity-graph identifiers a Klaviyo profile object carries."""
    return [
        (kind, value)
        for attribute, kind in KIND_OF_ATTRIBUTE.items()
        if isinstance(value := profile.get(attribute), str) and value
    ]
