"""Identity stage: one person, one Klaviyo profile.

Identifiers seen together in one call, or linked by `alias`, are one person in the identity
graph (the state store). Every profile upsert and every event carries all the identifiers we
know for that person — the most recent of each kind, the strongest first ("use email as
identifier": email > phone > external_id; off: external_id first) — so Klaviyo links them to one
profile. A person with no email, phone or external_id is never sent: their calls are held in the
store until an identify names them (see `hold`), then released onto the right profile.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from stream.core.calls import Call, Record
from stream.core.identifiers import Identifiers
from stream.core.timing import order_time
from stream.state import HeldEntry, Identifier, Kind, Person, StateStore
from stream.state.base import Guard
from stream.telemetry import metrics

EMAIL_FIRST = ("email", "phone_number", "external_id")
EXTERNAL_ID_FIRST = ("external_id", "email", "phone_number")
_ATTRIBUTE_OF_KIND = {"email": "email", "phone": "phone_number", "external_id": "external_id"}
_KIND_OF_ATTRIBUTE: dict[str, Kind] = {
    "email": "email", "phone_number": "phone", "external_id": "external_id"
}


EVENT_CALLS = ("track", "page", "screen")
MAX_CACHED_ID = 512  # characters; the caches are bounded in bytes as well as entries
# traits the service keeps for itself in the graph (each channel's latest consent change):
# stored and merged like any trait, never sent to Klaviyo as profile properties
PRIVATE_TRAITS = "$klaviyo_stream."


def _short(ids: Identifiers) -> bool:
    return all(value is None or len(value) <= MAX_CACHED_ID for value in ids)


def graph_identifiers(ids: Identifiers) -> list[Identifier]:
    """The identifiers of one call as identity-graph keys."""
    out: list[Identifier] = []
    if ids.email:
        out.append(("email", ids.email))
    if ids.phone_number:
        out.append(("phone", ids.phone_number))
    if ids.external_id:
        out.append(("external_id", ids.external_id))
    if ids.anonymous_id:
        out.append(("anonymous_id", ids.anonymous_id))
    return out


@dataclass(frozen=True, slots=True)
class Held:
    """An event waiting for its person to be named, as stored in the state store: the event,
    the anonymous id it waits under, and its original record (for its dead letter)."""

    event: dict[str, Any]
    anonymous_id: str
    record: Record

    def encode(self) -> bytes:
        r = self.record
        return orjson.dumps({
            "event": self.event, "anonymous_id": self.anonymous_id,
            "source": [r.topic, r.partition, r.offset],
            "key": _b64(r.key), "value": _b64(r.value),
            "headers": [
                [k, _b64(v.encode() if isinstance(v, str) else v)] for k, v in r.headers or ()
            ],
        })

    @staticmethod
    def decode(entry: HeldEntry) -> Held:
        """A stored entry as a held call whose record finishes by settling the entry."""
        raw = orjson.loads(entry.payload)
        topic, partition, offset = raw["source"]
        headers = raw.get("headers")
        record = Record(
            topic, partition, offset, _unb64(raw.get("key")), _unb64(raw.get("value")),
            [(k, _unb64(v)) for k, v in headers] if headers else None,
            message_id=raw["event"].get("unique_id"), held_id=entry.id,
        )
        return Held(raw["event"], raw["anonymous_id"], record)


@dataclass(slots=True)
class Linked:
    """What a link did for one call: the person it is attributed to (None while anonymous),
    the held events its identification released, or `tombstoned`: the call is older than a
    deletion of what it names, and nothing was linked."""

    person: Person | None
    released: list[Held] = field(default_factory=list)
    tombstoned: bool = False


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class IdentityResolver:
    """Links a call's identifiers into the graph and says whom to send it as."""

    def __init__(
        self, store: StateStore, *, email_first: bool = True, cache_seconds: float = 5.0,
        cache_size: int = 100_000, max_skew: float = 600.0,
    ) -> None:
        self._store = store
        self._max_skew = max_skew
        self._order = EMAIL_FIRST if email_first else EXTERNAL_ID_FIRST
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: dict[Identifier, tuple[Person, float]] = {}
        self._known: dict[Identifiers, tuple[Person, float]] = {}  # whole calls' identifiers
        self._current: dict[str, Person] = {}  # the latest snapshot of each remembered person
        self._profiles: dict[str, tuple[Person, dict[str, str], str]] = {}

    def link(
        self,
        call: Call,
        ids: Identifiers,
        traits: dict[str, Any] | None = None,
        guard: Guard | None = None,
    ) -> Linked:
        """Link what this call names by the identity rules (`stream.state.rules`). The call's
        time orders identifiers and traits, capped at now plus the allowed clock skew
        (`stream.core.timing`); it was checked before. A call with `traits` (an identify, or
        consent marks) always goes to the store; an event of a person seen lately is answered
        from the cache. `guard` is the store's check against deletions (`StateStore.link`)."""
        if traits is None and call.type in EVENT_CALLS:
            known = self._known.get(ids)  # the usual event: these very identifiers, seen lately
            if (
                known is not None
                and known[1] >= time.monotonic()
                and self._current.get(known[0].id) is known[0]
            ):
                return Linked(known[0])
        identifiers = graph_identifiers(ids)
        first: Identifier | None = None
        if call.type == "alias" and call.previous_id:
            identifiers.append(("anonymous_id", call.previous_id))
            renamed: Identifier = ("external_id", call.previous_id)
            if self._store.lookup(renamed) is not None:
                first = renamed  # a renamed user keeps their person
                identifiers.append(renamed)
        if not identifiers:
            return Linked(None)
        if traits is None and call.type != "alias":
            known_person = self._cached(identifiers)
            if known_person is not None:
                if len(self._known) >= self._cache_size:
                    self._known.clear()
                if _short(ids):
                    self._known[ids] = (known_person, time.monotonic() + self._cache_seconds)
                return Linked(known_person)
            if all(kind == "anonymous_id" for kind, _ in identifiers):
                return Linked(None)  # nothing to link: `hold` finds the person if there is one
        now = time.time()
        result = self._store.link(
            identifiers, traits, order_time(call, now, self._max_skew), now, first, guard
        )
        if result.tombstoned:
            return Linked(None, tombstoned=True)
        for kind in {kind for kind, _ in identifiers}:  # email|phone|external_id|anonymous_id
            metrics.IDENTITY_LINKS.labels(kind).inc()
        for kind, _value in result.refused:
            metrics.IDENTITY_LINKS_REFUSED.labels(kind).inc()
        for other in (*result.merged_ids, *result.refused_persons):
            self._current.pop(other, None)  # folded or robbed of an identifier: stale now
        self._remember(result.person)
        released = [Held.decode(entry) for entry in result.released]
        return Linked(result.person if result.person.named else None, released)

    def _cached(self, identifiers: list[Identifier]) -> Person | None:
        """The named person all these identifiers already belong to, if recently seen.

        Most calls are events of known persons that bring nothing new: they skip the store
        round trip. Staleness is bounded by `cache_seconds` (another consumer may have added
        an identifier meanwhile; Klaviyo still finds the profile by the ones we send).
        """
        now = time.monotonic()
        person: Person | None = None
        for identifier in identifiers:
            entry = self._cache.get(identifier)
            if entry is None or entry[1] < now or (person is not None and entry[0] is not person):
                return None
            person = entry[0]
        if person is not None and self._current.get(person.id) is not person:
            return None  # a newer snapshot exists, or a link took an identifier away
        return person

    def _remember(self, person: Person) -> None:
        if not person.named or self._cache_seconds <= 0:
            return
        if len(self._cache) >= self._cache_size:
            # simple bound: the caches refill from the store
            self._cache.clear()
            self._known.clear()
            self._current.clear()
        expires = time.monotonic() + self._cache_seconds
        self._current[person.id] = person
        for kind, values in person.identifiers.items():
            for value in values:
                if len(value) <= MAX_CACHED_ID:
                    self._cache[(kind, value)] = (person, expires)

    def named_owner(self, anonymous_id: str) -> Person | None:
        """The named person `anonymous_id` belongs to, if any (a store round trip)."""
        person = self._store.lookup(("anonymous_id", anonymous_id))
        return person if person is not None and person.named else None

    def same_person(self, ours: dict[str, Any], theirs: dict[str, str]) -> bool:
        """Whether another Klaviyo profile's identifiers (`theirs`) belong, in the graph, to
        the person our profile (`ours`) was built for: every one the graph knows is that
        person's, and it knows at least one."""
        me = None
        for attribute in ("external_id", "email", "phone_number"):
            if ours.get(attribute):
                me = self._store.lookup((_KIND_OF_ATTRIBUTE[attribute], ours[attribute]))
                if me is not None:
                    break
        if me is None:
            return False
        known = False
        for attribute, value in theirs.items():
            owner = self._store.lookup((_KIND_OF_ATTRIBUTE[attribute], value))
            if owner is None:
                continue
            if owner.id != me.id:
                return False
            known = True
        return known

    def hold(self, held: Held) -> Person | None:
        """Hold an anonymous person's event; the person if they were named meanwhile."""
        person = self._store.hold(held.anonymous_id, held.encode(), time.time())
        return person if person is not None and person.named else None

    def profile(self, person: Person) -> dict[str, str]:
        """Klaviyo profile identifiers of a person: the latest of each kind, strongest first."""
        return self.profile_with_key(person)[0]

    def profile_with_key(self, person: Person) -> tuple[dict[str, str], str]:
        """The profile and its sorted JSON, the batcher's group key (see `Item.group_key`).

        Memoized per person object (events of one person share them; never mutated)."""
        memo = self._profiles.get(person.id)
        if memo is not None and memo[0] is person:
            return memo[1], memo[2]
        latest = {
            _ATTRIBUTE_OF_KIND[kind]: values[0]
            for kind, values in person.identifiers.items()
            if kind in _ATTRIBUTE_OF_KIND and values
        }
        profile = {attr: latest[attr] for attr in self._order if attr in latest}
        key = orjson.dumps(profile, option=orjson.OPT_SORT_KEYS).decode()
        if len(self._profiles) >= self._cache_size:
            self._profiles.clear()
        self._profiles[person.id] = (person, profile, key)
        return profile, key

    @staticmethod
    def with_traits(call: Call, person: Person) -> Call:
        """The identify call carrying the person's merged traits (newest value per key), the
        service's private ones left out."""
        traits = {k: v for k, v in person.traits.items() if not k.startswith(PRIVATE_TRAITS)}
        return replace(call, traits=traits)

    def forget_cached(self) -> None:
        """Drop every remembered person (a deletion made some of them wrong): the next calls
        ask the store."""
        self._cache.clear()
        self._known.clear()
        self._current.clear()
        self._profiles.clear()
