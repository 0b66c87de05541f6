"""Consent, list and deletion actions: items of the completion ledger, batched per request.

A call's consent and list changes, and a delete call's deletions, are more items of its record
(`Action`), each one entry of a Klaviyo request: a subscription, an unsubscription, a
suppression, a list membership, a deletion by one identifier. They travel like events and
profile upserts (send stage, deliver stage, the ledger's outcomes and dead letters, labelled by
what they are) in lanes of their own (`ActionLane`): one per kind, each batch holding the
entries one request can take (same list, same live or historical import, up to Klaviyo's count).
`Action`, `ActionBatch` and `ActionLane` are siblings of `stream.delivery.batch`'s `Item`,
`Batch` and `Lane`: what the send stage, the gate and the ledger read of either is `Sendable`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.core.calls import Record
from stream.delivery.batch import Kind, Sendable
from stream.klaviyo.consent import ENDPOINTS, most_per_request

ACTION_KINDS: tuple[Kind, ...] = (
    "subscribe", "unsubscribe", "suppress", "unsuppress", "list_add", "list_remove", "deletion",
    "confirm", "back_in_stock",
)  # fmt: skip


@dataclass(slots=True, eq=False)
class Action:
    """One change for one person: `kind` (see ACTION_KINDS), `profile` its identifiers as
    Klaviyo attributes (email, phone_number, external_id; strongest first), `event` always None
    (an action sends no event; it is built with an item's arguments), `records` the record it
    finishes, `group_key` the request it can share (same list, same live or historical import,
    same source; computed here unless given), `person` whom the send stage keeps in order (an
    identity-graph id, or the erasure's), `label` its name in a dead letter (`subscribe
    email,sms`, `list add Xy12Ab`).

    `channels`: (un)subscribe's channels; `list_id`: a subscription's list, or the list joined
    or left; `consented_at`: a backfill subscription's consent time (historical import);
    `source`: its `custom_source`. `after`: items of its own record Klaviyo must answer first
    (a list change needs the profile they make). `variant`: the catalog variant of a
    back-in-stock subscription (`channels` its channels, EMAIL/SMS/WHATSAPP).

    A deletion (one per erased person) and its confirmations: `erasure` the erasure (the
    delete call's message id); `seq` its tombstone mark, the group-wide fence it waits for
    (`stream.identity.fence`); `lookups` the person's deletable identifiers as (attribute,
    value): the deletion goes by the first (or by a profile id learnt for `person_ids`), a
    confirmation looks them all up; `round` counts confirmations, and `found` says how many
    profiles one found (and deleted again). `ready_at`: the earliest moment (monotonic) it may
    leave (a confirmation: a settle time after its deletion; an action of a partition this
    replica was just given: once the previous owner's requests can no longer land).
    """

    kind: Kind
    profile: dict[str, Any]
    event: None
    records: list[Record]
    group_key: str = ""
    person: str | None = None
    label: str | None = None
    channels: tuple[str, ...] = ()
    list_id: str | None = None
    consented_at: str | None = None
    source: str = ""
    erasure: str | None = None
    variant: str | None = None  # a back-in-stock subscription's catalog variant
    after: int = 0
    seq: int = 0
    lookups: tuple[tuple[str, str], ...] = ()
    person_ids: tuple[str, ...] = ()
    ready_at: float = 0.0
    round: int = 0
    found: int = 0
    stamp: int | None = None  # the tombstone mark its record was judged against (`Item.stamp`)

    def __post_init__(self) -> None:
        if not self.group_key:  # the request it can share: same list, same kind of import
            historical = "historical" if self.consented_at is not None else "live"
            self.group_key = f"{self.list_id or ''}|{historical}|{self.source}"


@dataclass(slots=True, eq=False)
class ActionBatch:
    """Actions bound for one request (one kind, one request group); `reserved` as
    `Batch.reserved`: the endpoint whose send slot the send stage reserved for it."""

    kind: Kind
    items: list[Action] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)
    reserved: str | None = None

    def __post_init__(self) -> None:
        self.items = list(self.items)  # never the caller's list

    def put(self, action: Action) -> None:
        self.items.append(action)

    def without(self, items: Iterable[Sendable]) -> ActionBatch:
        """This batch less `items` (same kind, same reserved slot)."""
        gone = {id(item) for item in items}
        kept = [action for action in self.items if id(action) not in gone]
        return ActionBatch(self.kind, kept, reserved=self.reserved)

    @property
    def actions(self) -> list[Action]:
        """The batch's actions (its items)."""
        return self.items

    @property
    def records(self) -> list[Record]:
        return [r for action in self.items for r in action.records]

    def __len__(self) -> int:
        return len(self.items)


class ActionLane:
    """Collects one kind of action into batches, one open batch per request group, closed at
    Klaviyo's count per request; `take` gives the oldest full batch, else the oldest open one.
    Order per person is the gate's (`stream.engine.gate`): at most one action per person is here,
    so nothing parks (unlike `Lane`'s upserts)."""

    def __init__(
        self, kind: Kind, max_items: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kind = kind
        self._max_items = max_items
        self._clock = clock  # the send stage's: when a batch was opened
        self._groups: dict[str, ActionBatch] = {}  # open batches by request group
        self._full: deque[ActionBatch] = deque()
        self.items = 0  # actions waiting in the open and full batches

    def add(self, action: Action) -> None:
        """Add one action to its request group's open batch (closed once full)."""
        batch = self._groups.get(action.group_key)
        if batch is None:
            batch = self._groups[action.group_key] = ActionBatch(self.kind, opened=self._clock())
        batch.put(action)
        self.items += 1
        if len(batch) >= self._max_items:
            del self._groups[action.group_key]
            self._full.append(batch)

    @property
    def full(self) -> bool:
        """A batch is waiting that cannot grow any more."""
        return bool(self._full)

    @property
    def opened(self) -> float | None:
        """When the oldest waiting batch was opened (monotonic); None when nothing waits."""
        times = [batch.opened for batch in self._groups.values()]
        if self._full:
            times.append(self._full[0].opened)
        return min(times, default=None)

    def _oldest_open(self) -> str | None:
        if not self._groups:
            return None
        return min(self._groups, key=lambda key: self._groups[key].opened)

    @property
    def next_batch(self) -> ActionBatch | None:
        """The batch `take` would return now."""
        if self._full:
            return self._full[0]
        key = self._oldest_open()
        return self._groups[key] if key is not None else None

    @property
    def next_size(self) -> int:
        """Actions of the batch `take` would return now."""
        batch = self.next_batch
        return len(batch) if batch is not None else 0

    def take(self) -> ActionBatch | None:
        """The oldest full batch, else the oldest open one (closed now)."""
        if self._full:
            batch = self._full.popleft()
        else:
            key = self._oldest_open()
            if key is None:
                return None
            batch = self._groups.pop(key)
        self.items -= len(batch.items)
        return batch

    def done(self, batch: object) -> None:
        """Nothing waits on an answer here (the gate keeps each person in order)."""

    @property
    def parked(self) -> int:
        """Actions waiting for an answer before they may join a batch: none (see above)."""
        return 0

    def drain(self) -> list[ActionBatch]:
        """Every waiting batch, oldest first (tests and the synchronous tools)."""
        out = []
        while (batch := self.take()) is not None:
            out.append(batch)
        return out


def action_lanes(
    client_mode: bool = False, clock: Callable[[], float] = time.monotonic
) -> Mapping[Kind, ActionLane]:
    """One lane per action kind, each sized to its endpoint's most entries per request."""
    assert set(ACTION_KINDS) == set(ENDPOINTS)
    return {
        kind: ActionLane(kind, most_per_request(kind, client_mode), clock)
        for kind in ACTION_KINDS
    }
