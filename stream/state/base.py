"""Types shared by the state backends: identifiers, persons, link results and the store protocol.

The store keeps two things the hot path needs across restarts and across consumer processes:
the dedup window (message ids already delivered) and the identity graph (which identifiers
belong to one person, their traits, and the payloads of anonymous persons waiting to be named).

Clock: `now` / `timestamp` arguments are Unix seconds (`time.time()`). A dedup key marked at
`now` counts as seen until `now + window` on the wall clock, in both backends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import orjson

from stream.state.catalog import CatalogStore

Kind = Literal["email", "phone", "external_id", "anonymous_id"]
Identifier = tuple[Kind, str]  # values already normalized by the caller

KINDS: tuple[Kind, ...] = get_args(Kind)
NAMED_KINDS: tuple[Kind, ...] = ("email", "phone", "external_id")
DEFAULT_DEDUP_WINDOW = 7 * 86400.0
# A released held call stays in the store, leased, until it is finished; a lease that runs out
# (its process crashed) is reclaimed and sent again. Longer than a delivery's retry budget.
HELD_LEASE_SECONDS = 900.0



@dataclass(frozen=True)
class Person:
    """One canonical person: every identifier known for it and its merged traits."""

    id: str  # stable id of the canonical person
    identifiers: dict[Kind, tuple[str, ...]]  # per kind, most recently seen first
    traits: dict[str, Any]  # merged traits

    @property
    def named(self) -> bool:
        """True when the person has an email, phone or external_id (Klaviyo can identify it)."""
        return any(self.identifiers.get(kind) for kind in NAMED_KINDS)


@dataclass(frozen=True, slots=True)
class HeldEntry:
    """A held payload as the store returns it: its entry id (for `settle_held`), the anonymous
    id it waits under, and the payload."""

    id: str
    anonymous_id: str
    payload: bytes


@dataclass(frozen=True)
class LinkResult:
    """What one `link` call did (see `stream.state.rules` for who joins whom)."""

    person: Person  # the person the call is attributed to
    merged_ids: tuple[str, ...]  # ids of persons folded into `person` by this call
    released: tuple[HeldEntry, ...]  # held payloads leased because the person is now named
    refused: tuple[Identifier, ...] = ()  # the call's identifiers left unlinked by the rules
    refused_persons: tuple[str, ...] = ()  # persons a join with was refused


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget` removed: every identifier of the forgotten persons (those asked for
    included), how many persons and held calls; `again` when this erasure had been applied
    before (a re-read of its delete call): nothing was removed now, `identifiers` are the ones
    removed then."""

    identifiers: tuple[Identifier, ...]
    persons: int = 0
    held: int = 0
    again: bool = False

    def encode(self) -> bytes:
        """The erasure entry kept until Klaviyo accepted the deletions (identifiers, persons)."""
        return orjson.dumps({"identifiers": self.identifiers, "persons": self.persons})

    @staticmethod
    def decode(payload: bytes) -> Forgotten:
        """A stored erasure entry, read again: `again` is set."""
        raw = orjson.loads(payload)
        ids = tuple((kind, value) for kind, value in raw["identifiers"])
        return Forgotten(ids, int(raw.get("persons", 0)), 0, again=True)  # type: ignore[arg-type]


def tombstone_hash(identifier: Identifier) -> str:
    """A deleted identifier as its tombstone keeps it: SHA-256 (hex) of `kind:value`."""
    return hashlib.sha256(f"{identifier[0]}:{identifier[1]}".encode()).hexdigest()


class StateStore(CatalogStore, Protocol):
    """Dedup window + identity graph (+ the catalog's part, `CatalogStore`); every method is one
    atomic step (one round trip in Redis)."""

    lease_seconds: float  # how long a released held call stays leased to its sender

    def link(
        self,
        identifiers: Sequence[Identifier],
        traits: Mapping[str, Any] | None = None,
        timestamp: float = 0.0,
        now: float | None = None,
        first: Identifier | None = None,
    ) -> LinkResult:
        """Link a call's identifiers by the identity rules (`stream.state.rules`): the call is
        attributed to the owner of its strongest identifier (`first`, when given, is taken as
        the strongest: an alias's previous id); other owners are joined into it unless a
        kind's limit forbids it. Traits merge into that person per key: a trait replaces the
        stored one only if `timestamp` >= that key's stored timestamp. If the person is named
        afterwards, payloads held under its anonymous ids are returned, oldest first, and leased
        until `now` + the lease time: they stay stored until `settle_held`, and are not released
        again meanwhile. Raises ValueError if `identifiers` is empty.
        """
        ...

    def lookup(self, identifier: Identifier) -> Person | None:
        """The person owning `identifier`, or None."""
        ...

    def hold(self, anonymous_id: str, payload: bytes, now: float) -> Person | None:
        """Return the person if `anonymous_id` is named already, else hold `payload`; None.

        Atomic, so a concurrent `link` either sees the held payload or makes us see the person.
        """
        ...

    def expire_held(
        self, older_than: float, limit: int = 1000, lease_until: float | None = None
    ) -> list[HeldEntry]:
        """Payloads held (not leased) since before `older_than`, oldest first: removed when
        `lease_until` is None (dropped), else leased until then (sent anonymously)."""
        ...

    def reclaim_held(self, now: float, limit: int = 1000) -> list[HeldEntry]:
        """Leased payloads whose lease ran out by `now` (their sender crashed), leased again
        and returned, oldest first."""
        ...

    def settle_held(self, entry_ids: Sequence[str]) -> None:
        """Delete these entries: their calls were delivered or dead-lettered."""
        ...

    def held_count(self) -> int:
        """Number of payloads currently stored (held, or released and not yet settled)."""
        ...

    def held_bytes(self) -> int:
        """Total bytes of held payloads (for the memory bound)."""
        ...

    def seen(self, message_ids: Sequence[str]) -> set[str]:
        """Which of `message_ids` were marked delivered within the dedup window."""
        ...

    def mark_delivered(self, message_ids: Sequence[str], now: float) -> None:
        """Remember `message_ids` as delivered at `now` for the dedup window."""
        ...

    def prune(self, now: float) -> int:
        """Drop dedup keys older than the window; return how many were removed."""
        ...

    def stats(self) -> dict[str, int]:
        """Sizes for metrics: persons, identifiers, dedup_keys, held."""
        ...

    def forget(
        self, identifiers: Sequence[Identifier], deleted_at: float, erasure_id: str
    ) -> Forgotten:
        """Erase the persons owning any of `identifiers` (a data-privacy deletion), in one
        atomic step: their identifiers, traits and held calls (held under their anonymous ids)
        are removed, a tombstone (`tombstone_hash`, latest `deleted_at`) is kept for each of
        their identifiers and of `identifiers`, and an erasure entry `erasure_id` remembers
        which identifiers were removed until `settle_erasure`.

        Read again, a deletion changes nothing: if its entry exists (not settled yet) its
        identifiers are returned (`again`); if every one of `identifiers` has a tombstone at
        or after `deleted_at` it was applied before, and nothing is returned (`again`, no
        identifiers): whoever holds them now came after it.
        """
        ...

    def settle_erasure(self, erasure_id: str) -> None:
        """Delete an erasure entry: Klaviyo has the deletions of its identifiers."""
        ...

    def tombstones(self, after: int = 0) -> tuple[list[tuple[str, float]], int]:
        """Tombstones written after mark `after`, as (hash, deleted_at), and the newest mark
        (pass it as `after` next time to read only what is new)."""
        ...

    def close(self) -> None:
        """Release the connection; the data stays."""
        ...


def check_identifiers(identifiers: Sequence[Identifier]) -> list[Identifier]:
    """Validate kinds, drop exact duplicates keeping first position; ValueError if none."""
    out: list[Identifier] = []
    seen: set[Identifier] = set()
    for kind, value in identifiers:
        if kind not in KINDS:
            raise ValueError(f"unknown identifier kind {kind!r}")
        if not isinstance(value, str) or not value:
            raise ValueError(f"identifier {kind} must be a non-empty string")
        if (kind, value) not in seen:
            seen.add((kind, value))
            out.append((kind, value))
    if not out:
        raise ValueError("link() needs at least one identifier")
    return out


def build_person(
    person_id: str,
    rows: Sequence[tuple[str, str, float, int]],
    traits: dict[str, Any],
) -> Person:
    """Assemble a Person from (kind, value, last_seen, seq) rows, most recent first per kind."""
    ordered = sorted(rows, key=lambda r: (r[2], r[3]), reverse=True)
    identifiers: dict[Kind, list[str]] = {}
    for kind, value, _, _ in ordered:
        identifiers.setdefault(kind, []).append(value)  # type: ignore[arg-type]
    return Person(
        id=person_id,
        identifiers={k: tuple(v) for k, v in identifiers.items()},
        traits=traits,
    )
