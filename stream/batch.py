"""Batch stage: collect mapped items per endpoint and flush on count, bytes or linger time.

Events are grouped per profile, as `POST /api/event-bulk-create-jobs` expects. Sizes are the
exact encoded length of each entry plus its JSON:API wrapper, so a batch never crosses Klaviyo's
5 MB limit. A `unique_id` already in the open batch is not added twice (one repeated unique_id
fails a whole bulk request): the duplicate's source records ride along with the first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream.calls import Source

Kind = Literal["events", "profiles"]
MAX_REQUEST_BYTES = 5 * 1024 * 1024
# wrapper bytes per event entry (`{"type":"event","attributes":…},`) and per profile group
EVENT_WRAPPER = len(b'{"type":"event","attributes":},')
GROUP_WRAPPER = 160
ENVELOPE = 200


@dataclass(slots=True)
class Item:
    """One thing to send: an event (with its profile) or a profile upsert."""

    kind: Kind
    profile: dict[str, Any]
    event: dict[str, Any] | None
    sources: list[Source]
    group_key: str = ""
    size: int = 0

    def __post_init__(self) -> None:
        if not self.group_key:
            self.group_key = orjson.dumps(self.profile, option=orjson.OPT_SORT_KEYS).decode()
        if not self.size:
            body = self.event if self.event is not None else self.profile
            self.size = len(orjson.dumps(body)) + EVENT_WRAPPER

    @property
    def unique_id(self) -> str | None:
        return self.event.get("unique_id") if self.event else None


@dataclass(slots=True)
class Batch:
    """Items bound for one request, with their accounted size."""

    kind: Kind
    items: list[Item] = field(default_factory=list)
    groups: dict[str, list[Item]] = field(default_factory=dict)
    size: int = ENVELOPE
    opened: float = field(default_factory=time.monotonic)

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
        ready: list[Batch] = []
        batch = self._open.get(item.kind)
        uid = item.unique_id
        if batch is not None and uid is not None:
            metric = item.event["metric"]["data"]["attributes"]["name"] if item.event else ""
            twin = self._unique.get((item.group_key, metric, uid))
            if twin is not None:
                twin.sources.extend(item.sources)
                return ready
        extra = item.size + (0 if batch and item.group_key in batch.groups else GROUP_WRAPPER)
        if batch is not None and batch.size + extra > self._max_bytes:
            ready.append(self._close(item.kind))
            batch = None
        if batch is None:
            batch = self._open[item.kind] = Batch(item.kind)
            extra = item.size + GROUP_WRAPPER
        batch.items.append(item)
        batch.groups.setdefault(item.group_key, []).append(item)
        batch.size += extra
        if uid is not None and item.event is not None:
            metric = item.event["metric"]["data"]["attributes"]["name"]
            self._unique[(item.group_key, metric, uid)] = item
        if len(batch) >= self._max[item.kind]:
            ready.append(self._close(item.kind))
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
