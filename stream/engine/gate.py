"""The gate in front of the send stage for consent, list and deletion actions.

Each person's actions leave one at a time, in the order their calls were processed: the next
one goes when Klaviyo answered the one before (so a newer opt-out never races an older
subscription on the wire). And an action leaves only once what it follows was answered:

- a list change (`Action.after`), the items of its own record: the profile upsert (or the
  events) that make the profile whose id the membership needs;
- a deletion (`Action.fence`), every earlier record of its partition, finished: nothing of the
  person fetched before the delete call lands at Klaviyo after it and makes the profile again.

And a record newer than a deletion still in flight that names one of its identifiers (the
person coming back at once) waits here whole, items and actions (`hold`), until Klaviyo
answered that deletion (the deliver stage answers a deletion once the profile is gone): else
its upsert would land on the profile about to be deleted.

Actions waiting here belong to unfinished records: their offsets do not move, a crash or a
revoke reads them again. `answered` is told of every batch the deliver stage finished (before
the ledger settles it): it settles erasure entries whose deletions were all answered, and lets
the next actions go.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from stream.core.calls import Record
from stream.core.retry import until_available
from stream.delivery.actions import Action
from stream.delivery.batch import Item
from stream.identity.erasure import Erasure

STATE = "state store"


class Gate:
    """Holds actions until their turn; `put` them, report `answered` batches, `poll` fences."""

    def __init__(
        self,
        send: Callable[[Item], None],
        earlier_finished: Callable[[Record], bool],
        erasure: Erasure | None = None,
    ) -> None:
        self._send = send
        self._earlier_finished = earlier_finished
        self._erasure = erasure
        self._queues: dict[str, deque[Action]] = {}  # person → actions; the head is out or due
        self._before: dict[int, int] = {}  # id(record) → its items not yet answered
        self._blocked: list[Action] = []  # heads waiting for what they follow
        self._held: list[tuple[set[str], list[Item], list[Action]]] = []  # after erasures

    def waiting(self) -> list[Item]:
        """Items and actions here, not yet handed to the send stage (heads out excluded)."""
        blocked = {id(a) for a in self._blocked}
        out: list[Item] = [
            a for q in self._queues.values() for a in q if a is not q[0] or id(a) in blocked
        ]
        for _erasures, items, actions in self._held:
            out += items
            out += actions
        return out

    def put(self, action: Action) -> None:
        """Queue one action of a record whose own items were just handed to the send stage
        (`action.after` of them)."""
        record = action.records[0]
        if action.after and id(record) not in self._before:
            self._before[id(record)] = action.after
        queue = self._queues.setdefault(action.person or "", deque())
        queue.append(action)
        if len(queue) == 1:
            self._try(action)

    def hold(self, erasures: Sequence[str], items: list[Item], actions: list[Action]) -> None:
        """Keep one record's items and actions until these erasures were answered."""
        self._held.append((set(erasures), items, actions))

    def _release(self, finished: set[str]) -> None:
        still: list[tuple[set[str], list[Item], list[Action]]] = []
        for erasures, items, actions in self._held:
            erasures -= finished
            if erasures:
                still.append((erasures, items, actions))
                continue
            for action in actions:  # first: a list change counts the items that follow
                self.put(action)
            for item in items:
                self._send(item)
        self._held = still

    def _ready(self, action: Action) -> bool:
        record = action.records[0]
        if action.after and self._before.get(id(record), 0) > 0:
            return False
        return not action.fence or self._earlier_finished(record)

    def _try(self, head: Action) -> None:
        if self._ready(head):
            self._send(head)
        else:
            self._blocked.append(head)

    async def answered(self, items: Sequence[Item], failed: Sequence[Item] = ()) -> None:
        """A batch has its answer (each item accepted, or among `failed`): settle the erasures
        it completes, count down the records whose list changes wait, send what is due."""
        if not self._before and not (items and isinstance(items[0], Action)):
            self.poll()  # the usual batch (events, profiles) with no list change waiting
            return
        settled: list[str] = []
        finished: set[str] = set()
        refused = {id(item) for item in failed}
        for item in items:
            if isinstance(item, Action):
                erasure_id = item.erasure
                if erasure_id is not None and self._erasure is not None:
                    last, settle = self._erasure.answered(erasure_id, id(item) not in refused)
                    if last:
                        finished.add(erasure_id)
                    if settle:
                        settled.append(erasure_id)
                self._next(item)
            elif self._before:
                for record in item.records:
                    left = self._before.get(id(record))
                    if left is not None:
                        if left <= 1:
                            del self._before[id(record)]
                        else:
                            self._before[id(record)] = left - 1
        erasure = self._erasure
        if erasure is not None:
            for erasure_id in settled:  # before the ledger finishes the delete call's record
                await until_available(partial(erasure.settle, erasure_id), STATE)
        if finished and self._held:
            self._release(finished)
        self.poll()

    def _next(self, action: Action) -> None:
        key = action.person or ""
        queue = self._queues.get(key)
        if not queue:
            return
        if queue[0] is action:
            queue.popleft()
        else:  # not the head (cannot happen): drop it wherever it is
            try:
                queue.remove(action)
            except ValueError:
                return
        if queue:
            self._try(queue[0])
        else:
            del self._queues[key]

    def poll(self) -> None:
        """Send the waiting heads whose turn came (records finished without a batch answer,
        a dead letter acknowledged, say, move fences too: the service polls)."""
        if not self._blocked:
            return
        blocked, self._blocked = self._blocked, []
        for head in blocked:
            self._try(head)
