"""Batch stage: items, and the lanes that collect them into batches for one kind of request.

Events are grouped per profile, as `POST /api/event-bulk-create-jobs` expects. A batch's size is
accounted exactly: `Batch.size == len(orjson.dumps(body))` of the bulk request deliver sends
(the wrappers' lengths are measured once from `klaviyo.mapping` itself, so they cannot drift), so
a batch never crosses Klaviyo's 5 MB limit. A `unique_id` already in the open batch is not added
twice (one repeated unique_id fails a whole bulk request): the duplicate's records ride along.

Profiles: one upsert per Klaviyo identity in flight. An upsert is keyed by its person and by
every identifier it sends (email, phone number, external id), so persons folded together, an
identifier moved from one person to another, or a person forgotten and made anew still meet on
the keys Klaviyo matches profiles on. A newer snapshot replaces the one waiting in the open batch
that shares its keys (the older one's records ride along on it); one whose keys are in flight
waits, parked, until that request has an answer: an older snapshot never lands after a newer
one. A lane never decides *when* a batch leaves; the send stage (`stream.delivery.send`) does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from stream.core.calls import Record
from stream.core.errors import MappingError
from stream.klaviyo import mapping

Kind = Literal[
    "events", "profiles",
    # consent, list and deletion actions (`stream.delivery.actions`): lanes of their own
    "subscribe", "unsubscribe", "suppress", "unsuppress", "list_add", "list_remove", "deletion",
    "confirm",
    "back_in_stock",
]  # fmt: skip
KINDS: tuple[Kind, ...] = ("events", "profiles")
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_STRING_BYTES = 100 * 1024  # Klaviyo refuses any string longer than 100 KB


def _length(body: Any) -> int:
    return len(orjson.dumps(body))


# Exact byte costs of the bulk bodies' wrappers, measured on the real mapping functions.
EVENTS_ENVELOPE = _length(mapping.bulk_events_body([]))
_ONE_GROUP = _length(mapping.bulk_events_body([({}, [])]))
GROUP_WRAPPER = _ONE_GROUP - EVENTS_ENVELOPE - len(b"{}")  # a group minus its profile
EVENT_WRAPPER = _length(mapping.bulk_events_body([({}, [{}])])) - _ONE_GROUP - len(b"{}")
PROFILES_ENVELOPE = _length(mapping.bulk_profiles_body([]))
PROFILE_WRAPPER = _length(mapping.bulk_profiles_body([{}])) - PROFILES_ENVELOPE - len(b"{}")
ENVELOPE = {"events": EVENTS_ENVELOPE, "profiles": PROFILES_ENVELOPE}
META_KEY = b',"meta":'  # what a profile's `meta` adds besides its own JSON


def encode(value: Any) -> bytes:
    """`value` as JSON, compact; `MappingError` for what no JSON encoder takes (nesting deeper
    than orjson's 254 levels, integers beyond 64 bits, keys that are not strings)."""
    try:
        return memoryview(orjson.dumps(value)).tobytes()  # orjson's own reserves ~4 KiB
    except TypeError as exc:
        raise MappingError(f"cannot be encoded as JSON: {exc}") from None


class Sendable(Protocol):
    """What the send stage, the deliverer's settlement, the consent gate and the completion
    ledger read of anything a batch carries: an event or profile upsert (`Item`), or a consent,
    list or deletion action (`stream.delivery.actions.Action`). `group_key` is what a lane
    groups it by: an event's profile, an action's request group."""

    @property
    def kind(self) -> Kind: ...

    @property
    def profile(self) -> dict[str, Any]: ...

    @property
    def records(self) -> list[Record]: ...

    @property
    def person(self) -> str | None: ...

    @property
    def label(self) -> str | None: ...

    @property
    def group_key(self) -> str: ...

    @property
    def stamp(self) -> int | None: ...


@dataclass(slots=True, eq=False)
class Item:
    """One thing to send: an event (with its profile) or a profile upsert.

    `records` are the Kafka records it finishes (usually one; duplicates and replaced snapshots
    ride along). `label` names the item in its dead letter when a record made several items.
    `person` is the identity graph's person id of a profile upsert (one in flight per person).
    `size` is the item's exact cost in a bulk body; for an event, `group_size` is the cost of
    opening its profile's group. `group_key` is the profile's JSON with sorted keys (computed
    here unless the caller has it memoized, as `IdentityResolver.profile_with_key`). Raises
    `MappingError` for an item Klaviyo must refuse (a string over 100 KB, an item that alone
    exceeds a request) or that cannot be encoded at all.
    """

    kind: Kind
    profile: dict[str, Any]
    event: dict[str, Any] | None
    records: list[Record]
    group_key: str = ""
    person: str | None = None
    label: str | None = None
    meta: dict[str, Any] | None = None  # a profile upsert's patch operations (unset, append)
    size: int = 0
    group_size: int = 0
    encoded: bytes = b""  # the event's JSON, encoded once: bulk bodies embed it as it is
    stamp: int | None = None  # the tombstone mark the processing that made it judged against
    #                           (None: its records' `stamp`); a record processed again after a
    #                           deletion gets a newer one, what it made before keeps this

    def __post_init__(self) -> None:
        # sorting keys changes no length: the key's length is the profile's encoded length
        key = self.group_key
        if not key:
            try:
                key = orjson.dumps(self.profile, option=orjson.OPT_SORT_KEYS).decode()
            except TypeError as exc:
                raise MappingError(f"profile cannot be encoded as JSON: {exc}") from None
            self.group_key = key
        profile_bytes = len(key) if key.isascii() else len(key.encode())
        if self.event is not None:
            self.encoded = encode(self.event)
            encoded = len(self.encoded)
            self.size = encoded + EVENT_WRAPPER
            self.group_size = profile_bytes + GROUP_WRAPPER
        else:
            encoded = profile_bytes
            self.size = encoded + PROFILE_WRAPPER
            if self.meta is not None:  # `,"meta":{…}` after the attributes
                self.size += len(META_KEY) + len(encode(self.meta))
        if encoded > MAX_STRING_BYTES:
            _check_strings(self.event if self.event is not None else self.profile)
            if self.size + self.group_size + ENVELOPE[self.kind] > MAX_REQUEST_BYTES:
                raise MappingError(f"{self.kind[:-1]} alone exceeds Klaviyo's 5 MB request limit")


    def addressed(self, profile: dict[str, Any], group_key: str = "") -> Item:
        """This event sent on `profile` (its JSON with sorted keys as `group_key` when known):
        the event's encoding and checks are kept, the profile's cost is accounted anew."""
        if not group_key:
            group_key = orjson.dumps(profile, option=orjson.OPT_SORT_KEYS).decode()
        self.profile, self.group_key = profile, group_key
        profile_bytes = len(group_key) if group_key.isascii() else len(group_key.encode())
        self.group_size = profile_bytes + GROUP_WRAPPER
        if self.size + self.group_size + ENVELOPE[self.kind] > MAX_REQUEST_BYTES:
            raise MappingError(f"{self.kind[:-1]} alone exceeds Klaviyo's 5 MB request limit")
        return self


def _check_strings(value: Any) -> None:
    """Raise `MappingError` when a string anywhere in `value` exceeds 100 KB (UTF-8)."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if len(value) > MAX_STRING_BYTES // 4 and len(value.encode()) > MAX_STRING_BYTES:
                raise MappingError("a string value exceeds Klaviyo's 100 KB limit")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


@dataclass(slots=True, eq=False)
class Batch:
    """Items bound for one request, with their accounted size."""

    kind: Kind
    items: list[Item] = field(default_factory=list)
    groups: dict[str, list[Item]] = field(default_factory=dict)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)
    persons: dict[str, int] = field(default_factory=dict)  # profiles: person -> index in items
    reserved: str | None = None  # an endpoint whose send slot the send stage reserved for it

    def __post_init__(self) -> None:
        if not self.size:
            self.size = ENVELOPE[self.kind]
            given, self.items = self.items, []  # items given at construction (bisection, tests)
            for item in given:
                self.put(item)

    def cost(self, item: Item) -> int:
        """Exact bytes `item` adds to this batch's body (separating commas included)."""
        if item.kind == "profiles":
            return item.size + (1 if self.items else 0)
        if item.group_key in self.groups:
            return item.size + 1
        return item.group_size + item.size + (1 if self.groups else 0)

    def put(self, item: Item) -> None:
        """Append `item` (the caller checked that it fits)."""
        self.size += self.cost(item)
        if item.person is not None:
            self.persons[item.person] = len(self.items)
        self.items.append(item)
        group = self.groups.get(item.group_key)
        if group is None:
            self.groups[item.group_key] = [item]
        else:
            group.append(item)

    def replace(self, index: int, item: Item) -> None:
        """Put `item` (a newer profile snapshot) where `items[index]` was."""
        old = self.items[index]
        self.size += item.size - old.size
        self.items[index] = item
        group = self.groups.pop(old.group_key)
        group.remove(old)
        if group:
            self.groups[old.group_key] = group
        self.groups.setdefault(item.group_key, []).append(item)

    def without(self, items: Iterable[Sendable]) -> Batch:
        """This batch less `items` (same kind, same reserved slot; sizes accounted anew)."""
        gone = {id(item) for item in items}
        kept = [item for item in self.items if id(item) not in gone]
        return Batch(self.kind, kept, reserved=self.reserved)

    @property
    def records(self) -> list[Record]:
        return [r for item in self.items for r in item.records]

    def __len__(self) -> int:
        return len(self.items)


class Lane:
    """Collects the items of one kind into batches: an open one, and full ones waiting to be
    taken, oldest first. Batches close on count and exact bytes; time is the send stage's."""

    def __init__(
        self,
        kind: Kind,
        max_items: int,
        max_bytes: int = MAX_REQUEST_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._clock = clock  # the send stage's: when a batch was opened
        self._open: Batch | None = None
        self._full: deque[Batch] = deque()
        self._unique: dict[tuple[str, str, str], Item] = {}  # the open batch's unique_ids
        self._queued: dict[str, tuple[Batch, Item]] = {}  # upsert keys waiting in a batch
        self._keys: dict[int, tuple[str, ...]] = {}  # id(queued upsert) -> the keys it holds
        self._in_flight: dict[str, int] = {}  # upsert keys being sent (how many batches)
        self._flying: dict[int, list[str]] = {}  # id(batch) -> the upsert keys it carries
        self._parked: list[Item] = []  # upserts waiting for an answer, in arrival order
        self.items = 0  # items waiting in the open and full batches

    # adding -----------------------------------------------------------------------------------

    def add(self, item: Item) -> None:
        """Add one item to the open batch (closing it first when the item would not fit)."""
        if item.person is not None:
            keys = upsert_keys(item)
            if self._parked and _shares(keys, self._parked) or any(
                k in self._in_flight for k in keys
            ):
                self._park(item)
                return
            queued = {id(entry[1]): entry for k in keys if (entry := self._queued.get(k))}
            if len(queued) > 1:  # it joins upserts waiting apart: it follows them
                self._park(item)
                return
            if queued:
                [(waiting, old)] = queued.values()
                index = waiting.items.index(old)
                fits = waiting.size + item.size - old.size <= self._max_bytes
                if fits and old.meta is None and item.meta is None:
                    new = _newer(old, item)
                    waiting.replace(index, new)
                    # every key `old` held (its person's too, when the person id changed)
                    before = self._keys.pop(id(old), None) or upsert_keys(old)
                    held = tuple(dict.fromkeys((*before, *keys)))
                    self._keys[id(new)] = held
                    for key in held:
                        self._queued[key] = (waiting, new)
                else:  # cannot be folded into that request: it follows it
                    self._park(item)
                return
        event = item.event
        twin_key = None
        if event is not None and "unique_id" in event:
            twin_key = (
                item.group_key,
                event["metric"]["data"]["attributes"]["name"],
                event["unique_id"],
            )
            twin = self._unique.get(twin_key) if self._open is not None else None
            if twin is not None:
                twin.records.extend(item.records)
                return
        batch = self._open
        if batch is not None and batch.size + batch.cost(item) > self._max_bytes:
            self._close()
            batch = None
        if batch is None:
            batch = self._open = Batch(self.kind, opened=self._clock())
        batch.put(item)
        self.items += 1
        if item.person is not None:
            self._keys[id(item)] = upsert_keys(item)
            for key in self._keys[id(item)]:
                self._queued[key] = (batch, item)
        if twin_key is not None:
            self._unique[twin_key] = item
        if len(batch.items) >= self._max_items:
            self._close()

    def _park(self, item: Item) -> None:
        last = self._parked[-1] if self._parked else None
        if (
            last is not None
            and last.meta is None
            and item.meta is None
            and set(upsert_keys(last)) >= set(upsert_keys(item))
        ):
            self._parked[-1] = _newer(last, item)  # the same identity again: one upsert
        else:
            self._parked.append(item)

    def _close(self) -> None:
        batch = self._open
        if batch is not None:
            self._full.append(batch)
            self._open = None
            self._unique.clear()

    # taking -----------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """A batch is waiting that cannot grow any more."""
        return bool(self._full)

    @property
    def opened(self) -> float | None:
        """When the oldest waiting batch was opened (monotonic); None when nothing waits."""
        if self._full:
            return self._full[0].opened
        return self._open.opened if self._open is not None else None

    @property
    def next_batch(self) -> Batch | None:
        """The batch `take` would return now (still filling when it is the open one)."""
        return self._full[0] if self._full else self._open

    @property
    def next_size(self) -> int:
        """Items of the batch `take` would return now."""
        batch = self.next_batch
        return len(batch) if batch is not None else 0

    def take(self) -> Batch | None:
        """The oldest full batch, else the open one (closed now); its upserts are in flight."""
        if self._full:
            batch = self._full.popleft()
        elif self._open is not None:
            batch = self._open
            self._open = None
            self._unique.clear()
        else:
            return None
        self.items -= len(batch.items)
        if batch.persons:
            flying = [key for item in batch.items
                      for key in self._keys.pop(id(item), None) or upsert_keys(item)]  # fmt: skip
            for key in flying:
                self._queued.pop(key, None)
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._flying[id(batch)] = flying
        return batch

    def done(self, batch: object) -> None:
        """`batch` (one `take` gave) has its answer: its keys may be sent again; parked upserts
        move on, in order (one sharing a key with an earlier parked one keeps waiting behind
        it)."""
        for key in self._flying.pop(id(batch), ()):
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
        if not self._parked:
            return
        parked, self._parked = self._parked, []
        for item in parked:
            self.add(item)  # parks again behind whatever still holds one of its keys

    def drain(self) -> list[Batch]:
        """Every waiting batch, oldest first (tests and the synchronous tools)."""
        out = []
        while (batch := self.take()) is not None:
            out.append(batch)
        return out

    @property
    def parked(self) -> int:
        return len(self._parked)


IDENTITY_KEYS = ("email", "phone_number", "external_id")  # what Klaviyo matches a profile on


def upsert_keys(item: Item) -> tuple[str, ...]:
    """The keys one upsert is ordered by: its person, and each identifier it sends."""
    keys = [f"person:{item.person}"]
    profile = item.profile
    for attribute in IDENTITY_KEYS:
        value = profile.get(attribute)
        if value:
            keys.append(f"{attribute}:{value}")
    return tuple(keys)


def _shares(keys: tuple[str, ...], items: list[Item]) -> bool:
    held = {key for item in items for key in upsert_keys(item)}
    return any(key in held for key in keys)


def _newer(old: Item, new: Item) -> Item:
    """One upsert with the effect of `old` then `new` (a later snapshot of the same person),
    carrying both items' records: what `new` sets wins, what only `old` set (a location read
    from that call's context, say) stays, as if Klaviyo had applied both in order."""
    merged = dict(old.profile)
    for key, value in new.profile.items():
        before = merged.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            merged[key] = {**before, **value}  # properties, location, meta: key by key
        else:
            merged[key] = value
    return Item(
        new.kind, merged, None, old.records + new.records, person=new.person, label=new.label,
        meta=new.meta, stamp=min(stamp_of(old), stamp_of(new)),
    )


def stamp_of(item: Sendable) -> int:
    """The tombstone mark the work of an item (or action) was judged against: its own, else
    the lowest of its records'."""
    if item.stamp is not None:
        return item.stamp
    return min(r.stamp for r in item.records)
