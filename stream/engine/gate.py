"""The gate in front of the send stage for consent, list and deletion actions.

Order: actions that name the same Klaviyo identity leave one at a time, in the order their
calls were processed: each action is queued under its person's id and under every identifier
it sends (an email, a phone number, an external id), and leaves only at the head of all its
queues, the next one when Klaviyo answered it. A newer opt-out never races an older
subscription on the wire, even when persons were folded together, an identifier moved from one
person to another, or a person was forgotten in between (their ids change; the identifiers
Klaviyo matches on do not).

An action leaves only once what it follows is done:
- a list change (`Action.after`): the items of its own record (the profile upsert or events
  that make the profile whose id the membership needs);
- a deletion (`Action.seq`): the group-wide fence (`stream.identity.fence`): nothing any
  replica began before it can still reach Klaviyo;
- a confirmation, or any action with `ready_at`: that moment.

Deletions are followed to the end: a deletion Klaviyo took becomes a confirmation a settle time
later; a confirmation that found a profile (and deleted it again) another round; one that
found none settles the erasure; a dead-lettered one fails it. Records newer than a deletion
still under way wait here whole (`hold`), and so do records to be processed again (`hold_call`)
after the late check caught them (`stream.identity.erasure`), until those erasures are done
anywhere in the group.

Actions waiting here belong to unfinished records: their offsets do not move, a crash or a
revoke reads them again. `answered` is told of every batch the deliver stage finished, before
the ledger settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from stream.completion.ledger import Ledger
from stream.core.retry import until_available
from stream.delivery.actions import Action
from stream.delivery.batch import Item, Sendable
from stream.identity.erasure import Erasure
from stream.identity.fence import Fence
from stream.telemetry import metrics

STATE = "state store"
IDENTITIES = ("email", "phone_number", "external_id")  # what Klaviyo matches a profile on


class Gate:
    """Holds actions until their turn; `put` them, report `answered` batches, `poll` often."""

    def __init__(
        self,
        send: Callable[[Item | Action], None],
        *,
        erasure: Erasure | None = None,
        fence: Fence | None = None,
        settle_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._send = send
        self._stop = stop
        self._erasure = erasure
        self._fence = fence
        self._settle = settle_seconds
        self._clock = clock
        self._queues: dict[str, deque[Action]] = {}  # key -> actions, oldest first
        self._keys: dict[int, tuple[str, ...]] = {}  # id(action) -> its keys
        self._before: dict[int, int] = {}  # id(record) -> its items not yet answered
        self._blocked: dict[int, Action] = {}  # at the head of all its queues, not ready
        self._out: set[int] = set()  # handed to the send stage
        self._held: list[tuple[set[str], list[Item], list[Action]]] = []  # after erasures
        self._calls: list[tuple[set[str], Callable[[], None]]] = []  # processed again after
        self._started: dict[str, float] = {}  # erasure -> when its deletion came here
        self._chains: dict[str, int] = {}  # erasure -> its deletions followed here, unfinished

    # in --------------------------------------------------------------------------------------

    def put(self, action: Action) -> None:
        """Queue one action of a record whose own items were just handed to the send stage
        (`action.after` of them)."""
        record = action.records[0]
        if action.after and id(record) not in self._before:
            self._before[id(record)] = action.after
        if action.kind == "deletion" and action.erasure is not None:
            self._started.setdefault(action.erasure, self._clock())
            self._chains[action.erasure] = self._chains.get(action.erasure, 0) + 1
        keys = _keys(action)
        self._keys[id(action)] = keys
        for key in keys:
            self._queues.setdefault(key, deque()).append(action)
        if self._at_front(action):
            self._try(action)

    def hold(self, erasures: Sequence[str], items: list[Item], actions: list[Action]) -> None:
        """Keep one record's items and actions until these erasures are done."""
        self._held.append((set(erasures), items, actions))

    @property
    def holds(self) -> bool:
        """Whether any record's work waits here for erasures."""
        return bool(self._held)

    def holding(self, persons: set[str]) -> set[str]:
        """The erasures that held work of any of these persons waits for (their later work
        waits with it, so each person's work leaves in the order it was processed)."""
        out: set[str] = set()
        for erasures, items, actions in self._held if persons else ():
            mine = any(i.person in persons for i in items)
            if mine or any(a.person in persons for a in actions):
                out |= erasures
        return out

    def hold_call(self, erasures: Sequence[str], again: Callable[[], None]) -> None:
        """Run `again` (process a record anew) once these erasures are done."""
        self._calls.append((set(erasures), again))

    def waiting(self) -> list[Item | Action]:
        """Items and actions here, not yet handed to the send stage."""
        out: list[Item | Action] = [
            action
            for key, queue in self._queues.items()
            for action in queue
            if id(action) not in self._out and self._keys[id(action)][0] == key
        ]
        for _erasures, items, actions in self._held:
            out += items
            out += actions
        return out

    # out -------------------------------------------------------------------------------------

    def _at_front(self, action: Action) -> bool:
        return all(self._queues[key][0] is action for key in self._keys[id(action)])

    def _ready(self, action: Action) -> bool:
        if action.after and self._before.get(id(action.records[0]), 0) > 0:
            return False
        if action.ready_at and self._clock() < action.ready_at:
            return False
        return not action.seq or self._fence is None or self._fence.passed(action.seq)

    def _try(self, action: Action) -> None:
        if self._ready(action):
            self._blocked.pop(id(action), None)
            self._out.add(id(action))
            self._send(action)
        else:
            self._blocked[id(action)] = action

    def _done(self, action: Action) -> None:
        """`action` was answered: the next ones of its queues may go."""
        self._out.discard(id(action))
        self._blocked.pop(id(action), None)
        keys = self._keys.pop(id(action), ())
        heads: list[Action] = []
        for key in keys:
            queue = self._queues.get(key)
            if not queue:
                continue
            with contextlib.suppress(ValueError):  # it is the head: the send rule says so
                queue.remove(action)
            if queue:
                heads.append(queue[0])
            else:
                del self._queues[key]
        for head in heads:
            if id(head) not in self._out and self._at_front(head):
                self._try(head)

    def dropped(self, items: Sequence[Sendable]) -> None:
        """These were cancelled (their partition moved on): the next ones may go; their
        erasures stay PENDING for the partition's next owner."""
        for item in items:
            if isinstance(item, Action):
                if item.erasure is not None:
                    self._last_of(item.erasure)  # that deletion ends here, undecided
                self._done(item)
            else:
                self._count_down(item)
        self.poll()

    # answers ---------------------------------------------------------------------------------

    async def answered(self, items: Sequence[Sendable], failed: Sequence[Sendable] = ()) -> None:
        """A batch has its answer (each item accepted, or among `failed`): follow deletions,
        count down the records whose list changes wait, send what is due."""
        if not self._before and not (items and isinstance(items[0], Action)):
            self.poll()  # the usual batch (events, profiles) with no list change waiting
            return
        refused = {id(item) for item in failed}
        done: list[str] = []
        gone: list[str] = []
        for item in items:
            if isinstance(item, Action):
                ok = id(item) not in refused
                if item.erasure is not None:
                    self._follow(item, ok, done, gone)
                elif item.kind == "unsubscribe":
                    metrics.OPT_OUTS.labels("sent" if ok else "dead_lettered").inc()
                self._done(item)
            else:
                self._count_down(item)
        erasure = self._erasure
        if erasure is not None:  # before the ledger finishes the delete call's record
            for erasure_id in done:
                await until_available(partial(erasure.settle, erasure_id), STATE, stop=self._stop)
            for erasure_id in gone:
                await until_available(partial(erasure.fail, erasure_id), STATE, stop=self._stop)
        for erasure_id in [*done, *gone]:
            self._started.pop(erasure_id, None)
        self.poll()

    def _count_down(self, item: Sendable) -> None:
        """One of its record's items ended (answered, or never to be sent): a list change of
        that record waits for one fewer."""
        for record in item.records if self._before else ():
            left = self._before.get(id(record))
            if left is not None:
                if left <= 1:
                    del self._before[id(record)]
                else:
                    self._before[id(record)] = left - 1

    def _follow(self, action: Action, ok: bool, done: list[str], gone: list[str]) -> None:
        """A deletion or confirmation was answered: what comes next for its erasure."""
        assert action.erasure is not None
        if not ok:
            if self._last_of(action.erasure):
                gone.append(action.erasure)
            if action.kind == "confirm":
                metrics.DELETIONS.labels("not_confirmed").inc()
            return
        if action.kind == "confirm" and not action.found:
            if self._last_of(action.erasure):
                done.append(action.erasure)
            metrics.DELETIONS.labels("confirmed").inc()
            return
        record = action.records[0]
        Ledger.expect(record)  # the delete call's record waits for the confirmation too
        self.put(Action(
            "confirm", {}, None, [record], person=action.person, label="deletion confirm",
            erasure=action.erasure, lookups=action.lookups, person_ids=action.person_ids,
            ready_at=self._clock() + self._settle, round=action.round + 1,
        ))  # fmt: skip

    def _last_of(self, erasure_id: str) -> bool:
        """One deletion of this erasure ended (with its confirmations): whether it was the
        last one followed here. A delete call read again (a revoke, a re-read before its
        first deletion was confirmed) starts another; the erasure stays open, and the calls
        of a comeback waiting, until that one is confirmed too (else they would land on the
        profile its confirmation then deletes)."""
        left = self._chains.get(erasure_id, 0) - 1
        if left > 0:
            self._chains[erasure_id] = left
            return False
        self._chains.pop(erasure_id, None)
        return True

    # polling ---------------------------------------------------------------------------------

    def poll(self) -> None:
        """Send the waiting heads whose turn came, let go what waited for erasures that are
        done, and publish the deletions waiting (the service polls every turn of its loop)."""
        if self._blocked:
            for action in list(self._blocked.values()):
                if id(action) in self._blocked:
                    self._try(action)
        if self._held or self._calls:
            self._release()
        now = self._clock()
        metrics.ACTIONS_AWAITING_PREVIOUS_OWNER.set(sum(
            1 for a in self._blocked.values() if a.kind != "confirm" and a.ready_at > now
        ))  # fmt: skip
        if self._started:
            metrics.DELETIONS_WAITING.set(len({
                id(a) for q in self._queues.values() for a in q
                if a.kind == "deletion" and id(a) not in self._out
            }))  # fmt: skip
            metrics.DELETION_OLDEST_WAIT.set(self._clock() - min(self._started.values()))
        else:
            metrics.DELETIONS_WAITING.set(0)
            metrics.DELETION_OLDEST_WAIT.set(0)

    def _release(self) -> None:
        erasure = self._erasure
        if erasure is None:
            return
        held, self._held = self._held, []
        for erasures, items, actions in held:
            if any(erasure.is_open(e) for e in erasures):
                self._held.append((erasures, items, actions))
                continue
            for action in actions:  # first: a list change counts the items that follow
                self.put(action)
            for item in items:
                self._send(item)
        calls, self._calls = self._calls, []
        for erasures, again in calls:
            if any(erasure.is_open(e) for e in erasures):
                self._calls.append((erasures, again))
            else:
                again()


def _keys(action: Action) -> tuple[str, ...]:
    """The queues an action waits in: its person, and each identifier it sends or deletes."""
    keys = [action.person or ""]
    for attribute in IDENTITIES:
        value = action.profile.get(attribute)
        if value:
            keys.append(f"{attribute}:{value}")
    if action.kind == "deletion":
        keys += [f"{a}:{v}" for a, v in action.lookups if f"{a}:{v}" not in keys]
    return tuple(keys)
