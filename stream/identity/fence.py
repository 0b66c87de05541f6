"""The group-wide fence in front of deletions: a deletion leaves once no work any replica began
before it can still reach Klaviyo, on any partition.

Every replica stamps what it begins (a record processed, a released held call adopted) with the
tombstone mark it has read (`Erasure.mark`). When the send stage takes a batch, work stamped
before a deletion this replica learnt of since is judged again (`Erasure.late`); what is taken
is *on the wire* from then until answered, under the mark current when it was taken. So what
this replica can still send to Klaviyo that was begun before mark S is exactly what is on the
wire under a mark below S, and it publishes, every heartbeat, the lowest of those marks (its
own mark when nothing is out), alive for its liveness. A deletion of mark S leaves when every
live replica's published mark is at least S. A replica that dies stops counting once its
liveness has run out and then the request timeout too (what it had on the wire has landed or
never will); the held calls it was sending are taken over as soon as its liveness runs out
(sent twice at worst, which Klaviyo's `unique_id` absorbs).

Nothing here trusts a clock but the store's: no CreateTime, no committed offset, no partition
assignment is read, so a producer's skewed clock, a transactional topic's markers, an idle
partition or a rebalance cannot open the fence early.

Deletions and confirmations themselves never make a profile: they are not counted as on the
wire. The replica's id is also the owner of the held calls it releases: they follow its liveness
(`StateStore.reclaim_held`).
"""

from __future__ import annotations

import itertools
import uuid

from stream.identity.erasure import Erasure
from stream.state import StateStore

HEARTBEAT_SECONDS = 1.0
LIVENESS_SECONDS = 10.0  # a replica that has not published for this long (plus the request
#                          timeout) is gone


class Fence:
    """This replica's marks: what it has on the wire, and the group's lowest (see the module)."""

    def __init__(
        self,
        store: StateStore,
        erasure: Erasure,
        *,
        replica: str | None = None,
        request_timeout: float = 30.0,
        liveness: float = LIVENESS_SECONDS,
    ) -> None:
        self._store = store
        self._erasure = erasure
        self.replica = replica or uuid.uuid4().hex
        self._liveness = liveness
        self._grace = request_timeout
        self._tokens = itertools.count()
        self._wire: dict[int, int] = {}  # token -> the mark its batch was taken under
        self.low: int | None = None  # the group's lowest published mark, as last read
        self.others = True  # another replica was alive at the last heartbeat (one may be)

    def sending(self, mark: int) -> int:
        """A batch leaves now, judged against every deletion up to `mark`: a token for
        `answered`."""
        token = next(self._tokens)
        self._wire[token] = min(mark, self._erasure.mark)
        return token

    def answered(self, token: int) -> None:
        """That batch has its answer (or will never be sent)."""
        self._wire.pop(token, None)

    @property
    def own(self) -> int:
        """Nothing this replica began before this mark can still reach Klaviyo."""
        return min(self._wire.values(), default=self._erasure.mark)

    def heartbeat(self) -> None:
        """Publish this replica's mark and read the group's lowest (`StateError` when the
        store is down: the fence stays shut meanwhile)."""
        self._store.publish_mark(self.replica, self.own, self._liveness)
        self.low = self._store.low_mark(self._grace)
        self.others = bool(self._store.live_replicas() - {self.replica})

    def retire(self) -> None:
        """This replica stops (cleanly, nothing of it on the wire): it counts no longer."""
        self._store.publish_mark(self.replica, self.own, 0.0)

    def passed(self, seq: int) -> bool:
        """Whether a deletion of tombstone mark `seq` may leave."""
        return self.low is not None and self.low >= seq and self.own >= seq
