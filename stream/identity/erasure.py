"""Erasure: a `delete` call forgets its person here, and records older than it stay dropped.

`forget` erases the person in the state store (identity-graph nodes, traits, held calls) in one
atomic step that also writes a tombstone per identifier (SHA-256 of `kind:value` and the
deletion time, nothing else) and an erasure entry naming the identifiers removed, kept until
Klaviyo accepted every deletion sent for them (`answered`): a crash in between reads the
delete call again, and the entry (not the graph, which has forgotten) says what to delete; a
dead-lettered deletion keeps it for the replay. A delete call read again once it is done
(its tombstones say so) changes nothing: whoever holds its identifiers now came after it.
The deletion time is the delete call's own time (capped like any call's, `stream.core.timing`).

`before_deletion` drops a call that names a tombstoned identifier and is older than that
deletion (read again after a rebalance, replayed from the dead-letter topic): it would bring
the person back. A newer call starts a new person. This process keeps the tombstones in
memory and reads new ones from the store at most a second late (other replicas' deletions
included); a deletion made here counts at once, and clears the identity caches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from stream.core.calls import Call
from stream.core.identifiers import Identifiers
from stream.core.timing import order_time
from stream.identity.resolver import IdentityResolver, graph_identifiers
from stream.state import Identifier, StateStore
from stream.state.base import Forgotten, tombstone_hash
from stream.telemetry import metrics

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0  # how stale this process's view of other replicas' tombstones may be


class Erasure:
    """Deletions of this process and the tombstones of all of them."""

    def __init__(
        self,
        store: StateStore,
        identity: IdentityResolver,
        *,
        max_skew: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._identity = identity
        self._max_skew = max_skew
        self._clock = clock
        self._tombstones: dict[str, float] = {}  # hash → latest deletion time
        self._mark = 0
        self._read_at = float("-inf")
        self._open: dict[str, int] = {}  # erasure id → deletions not yet answered
        self._failed: set[str] = set()  # erasures with a dead-lettered deletion
        self._in_flight: dict[str, str] = {}  # hash of an identifier being deleted → erasure

    # tombstones -------------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Read the tombstones written since the last read (at most once a second unless
        `force`); new ones clear the identity caches (a person they name may be cached)."""
        now = self._clock()
        if not force and now - self._read_at < REFRESH_SECONDS:
            return
        found, mark = self._store.tombstones(self._mark)
        self._read_at, self._mark = now, mark
        if found:
            self._keep(found)
            self._identity.forget_cached()

    def _keep(self, found: Sequence[tuple[str, float]]) -> None:
        for digest, deleted_at in found:
            if deleted_at > self._tombstones.get(digest, float("-inf")):
                self._tombstones[digest] = deleted_at

    def before_deletion(self, call: Call, ids: Identifiers) -> bool:
        """True (counted) when the call names a deleted identifier and is older than that
        deletion: it is dropped, never sent, never linked."""
        self.refresh()
        if not self._tombstones:
            return False
        latest = max(
            (self._tombstones.get(digest, float("-inf")) for digest in _hashes(call, ids)),
            default=float("-inf"),
        )
        if latest == float("-inf"):
            return False
        if order_time(call, time.time(), self._max_skew) >= latest:
            return False  # newer than the deletion: a new person
        metrics.RECORDS_TOMBSTONED.inc()
        return True

    # deletions --------------------------------------------------------------------------------

    def forget(self, call: Call, identifiers: Sequence[Identifier]) -> Forgotten:
        """Forget whoever `identifiers` name, as of the delete call's time (see the module)."""
        deleted_at = order_time(call, time.time(), self._max_skew)
        forgotten = self._store.forget(identifiers, deleted_at, call.message_id)
        self._keep([(tombstone_hash(ident), deleted_at) for ident in forgotten.identifiers])
        self._identity.forget_cached()
        if not forgotten.again:
            metrics.FORGOTTEN.labels("persons").inc(forgotten.persons)
            metrics.FORGOTTEN.labels("identifiers").inc(len(forgotten.identifiers))
            metrics.FORGOTTEN.labels("held_calls").inc(forgotten.held)
        return forgotten

    def expect(
        self, erasure_id: str, deletions: int, identifiers: Sequence[Identifier] = ()
    ) -> None:
        """`deletions` requests go to Klaviyo for this erasure (its `identifiers` are being
        deleted until they are answered: `pending`); with none, it is done now."""
        if deletions <= 0:
            self._store.settle_erasure(erasure_id)
            return
        self._open[erasure_id] = self._open.get(erasure_id, 0) + deletions
        for ident in identifiers:
            self._in_flight[tombstone_hash(ident)] = erasure_id

    def pending(self, call: Call, ids: Identifiers) -> tuple[str, ...]:
        """Erasures of this process still in flight at Klaviyo that the call names: a call
        newer than a deletion waits for it, or it would land on the profile being deleted."""
        if not self._in_flight:
            return ()
        found = {self._in_flight.get(digest) for digest in _hashes(call, ids)}
        return tuple(sorted(e for e in found if e is not None))

    def answered(self, erasure_id: str, accepted: bool) -> tuple[bool, bool]:
        """One deletion of the erasure was answered: (was it the last, may its entry go). The
        entry goes (`settle`) when Klaviyo accepted them all; one dead-lettered keeps it, so a
        replay of the delete call sends again every identifier it removed here."""
        left = self._open.get(erasure_id)
        if left is None:
            return False, False
        if not accepted:
            self._failed.add(erasure_id)
        if left > 1:
            self._open[erasure_id] = left - 1
            return False, False
        del self._open[erasure_id]
        for digest in [d for d, e in self._in_flight.items() if e == erasure_id]:
            del self._in_flight[digest]
        if erasure_id in self._failed:
            self._failed.discard(erasure_id)
            log.warning(
                "a deletion was dead-lettered: the erasure entry stays until it is replayed",
                extra={"erasure": erasure_id},
            )
            return True, False
        return True, True

    def settle(self, erasure_id: str) -> None:
        """Delete the erasure entry (a store write; `StateError` when the store is down)."""
        self._store.settle_erasure(erasure_id)


def _hashes(call: Call, ids: Identifiers) -> list[str]:
    """Tombstone hashes of every identifier a call names (an alias's previous id too)."""
    names = graph_identifiers(ids)
    if call.previous_id:
        names.append(("anonymous_id", call.previous_id))
    return [tombstone_hash(name) for name in names]
