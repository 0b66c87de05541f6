"""Batch stage: collect mapped items per endpoint and flush on count, bytes or linger time.

Events are grouped per profile, as `POST /api/event-bulk-create-jobs` expects. A batch's size is
accounted exactly: `Batch.size == len(orjson.dumps(body))` of the bulk request deliver sends
(the wrappers' lengths are measured once from `klaviyo.mapping` itself, so they cannot drift), so
a batch never crosses Klaviyo's 5 MB limit. A `unique_id` already in the open batch is not added
twice (one repeated unique_id fails a whole bulk request): the duplicate's sources ride along.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream.calls import Source
from stream.errors import MappingError
from stream.klaviyo import mapping

Kind = Literal["events", "profiles"]
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


@dataclass(slots=True)
class Item:
    """One thing to send: an event (with its profile) or a profile upsert.

    `size` is the item's exact cost in a bulk body; for an event, `group_size` is the cost of
    opening its profile's group. `group_key` is the profile's JSON with sorted keys (computed
    here unless the caller has it memoized, as `IdentityResolver.profile_with_key`). Raises
    `MappingError` for an item Klaviyo must refuse (a string over 100 KB, or an item that alone
    exceeds a request).
    """

    kind: Kind
    profile: dict[str, Any]
    event: dict[str, Any] | None
    sources: list[Source]
    group_key: str = ""
    size: int = 0
    group_size: int = 0
    encoded: bytes = b""  # the event's JSON, encoded once: bulk bodies embed it as it is

    def __post_init__(self) -> None:
        # sorting keys changes no length: the key's length is the profile's encoded length
        key = self.group_key
        if not key:
            key = self.group_key = orjson.dumps(self.profile, option=orjson.OPT_SORT_KEYS).decode()
        profile_bytes = len(key) if key.isascii() else len(key.encode())
        if self.event is not None:
            # a compact copy: orjson's own result reserves about 4 KiB however short it is
            self.encoded = memoryview(orjson.dumps(self.event)).tobytes()
            encoded = len(self.encoded)
            self.size = encoded + EVENT_WRAPPER
            self.group_size = profile_bytes + GROUP_WRAPPER
        else:
            encoded = profile_bytes
            self.size = encoded + PROFILE_WRAPPER
        if encoded > MAX_STRING_BYTES:
            _check_strings(self.event if self.event is not None else self.profile)
            if self.size + self.group_size + ENVELOPE[self.kind] > MAX_REQUEST_BYTES:
                raise MappingError(f"{self.kind[:-1]} alone exceeds Klaviyo's 5 MB request limit")


def _check_strings(value: Any) -> None:
    """Raise `MappingError` when a string anywhere in `value` exceeds 100 KB (UTF-8)."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_BYTES // 4 and len(value.encode()) > MAX_STRING_BYTES:
            raise MappingError("a string value exceeds Klaviyo's 100 KB limit")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _check_strings(key)
            _check_strings(inner)
    elif isinstance(value, list):
        for inner in value:
            _check_strings(inner)


@dataclass(slots=True)
class Batch:
    """Items bound for one request, with their accounted size."""

    kind: Kind
    items: list[Item] = field(default_factory=list)
    groups: dict[str, list[Item]] = field(default_factory=dict)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not self.size:
            self.size = ENVELOPE[self.kind]

    def cost(self, item: Item) -> int:
        """Exact bytes `item` adds to this batch's body (separating commas included)."""
        if item.kind == "profiles":
            return item.size + (1 if self.items else 0)
        if item.group_key in self.groups:
            return item.size + 1
        return item.group_size + item.size + (1 if self.groups else 0)

    @property
    def sources(self) -> list[Source]:
        return [s for item in self.items for s in item.sources]

    def __len__(self) -> int:
        return len(self.items)


class Batcher:
    """Holds at most one open batch per kind; hands out batches that are ready to send."""

    def __init__(
        self,
        max_events: int = 1000,
        max_profiles: int = 10_000,
        linger_seconds: float = 0.2,
        max_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self._max = {"events": max_events, "profiles": max_profiles}
        self._linger = linger_seconds
        self._max_bytes = max_bytes
        self._open: dict[Kind, Batch] = {}
        self._unique: dict[tuple[str, str, str], Item] = {}

    def add(self, item: Item) -> list[Batch]:
        """Add one item; returns the batches that became full (usually none)."""
        kind = item.kind
        batch = self._open.get(kind)
        event = item.event
        twin_key = None
        if event is not None and "unique_id" in event:
            twin_key = (
                item.group_key,
                event["metric"]["data"]["attributes"]["name"],
                event["unique_id"],
            )
            twin = self._unique.get(twin_key) if batch is not None else None
            if twin is not None:
                twin.sources.extend(item.sources)
                return []
        ready: list[Batch] = []
        if batch is not None:
            cost = batch.cost(item)
            if batch.size + cost > self._max_bytes:
                ready.append(self._close(kind))
                batch = None
        if batch is None:
            batch = self._open[kind] = Batch(kind)
            cost = batch.cost(item)
        batch.items.append(item)
        group = batch.groups.get(item.group_key)
        if group is None:
            batch.groups[item.group_key] = [item]
        else:
            group.append(item)
        batch.size += cost
        if twin_key is not None:
            self._unique[twin_key] = item
        if len(batch.items) >= self._max[kind]:
            ready.append(self._close(kind))
        return ready

    def due(self, now: float | None = None) -> list[Batch]:
        """Batches whose linger time has passed."""
        now = time.monotonic() if now is None else now
        kinds = [k for k, b in self._open.items() if now - b.opened >= self._linger]
        return [self._close(k) for k in kinds]

    def drain(self) -> list[Batch]:
        """Every open batch, for shutdown."""
        return [self._close(k) for k in list(self._open)]

    def _close(self, kind: Kind) -> Batch:
        batch = self._open.pop(kind)
        if kind == "events":
            self._unique.clear()
        return batch
