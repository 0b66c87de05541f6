"""Types shared by the state backends: identifiers, persons, link results and the store protocol.

The store keeps two things the hot path needs across restarts and across consumer processes:
the dedup window (message ids already delivered) and the identity graph (which identifiers
belong to one person, their traits, and the payloads of anonymous persons waiting to be named).

Clock: `now` / `timestamp` arguments are Unix seconds (`time.time()`). A dedup key marked at
`now` counts as seen until `now + window` on the wall clock, in both backends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
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
    tombstoned: bool = False  # the guard refused the link: nothing changed, `person` is empty


Position = tuple[str, int, int]  # (topic, partition, offset) of a record


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What a deletion leaves of one identifier: the deletion's time, its write mark (`seq`,
    store-wide, one per erasure), the erasure (the delete call's message id) and where the
    delete call sat in Kafka (`position`, None when unknown: tombstones of an older release)."""

    deleted_at: float
    seq: int
    erasure: str = ""
    position: Position | None = None

    def encode(self) -> str:
        """`erasure topic:partition:offset` (the parts a tombstone keeps besides time and mark)."""
        where = "" if self.position is None else ":".join(map(str, self.position))
        return f"{self.erasure} {where}"

    @staticmethod
    def decode(deleted_at: float, seq: int, extra: str | None) -> Tombstone:
        erasure, _, where = (extra or "").partition(" ")
        position: Position | None = None
        if where:
            topic, partition, offset = where.rsplit(":", 2)
            position = (topic, int(partition), int(offset))
        return Tombstone(deleted_at, seq, erasure, position)


# a link's check against deletions: the tombstones of the call's identifiers (by hash) ->
# True when the call is older than one of those deletions (`stream.identity.tombstones`)
Guard = Callable[[Mapping[str, Tombstone]], bool]

PENDING, FAILED = "pending", "failed"  # an erasure's state until it is settled (deleted)


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget` removed: the identifiers of the erased person (those the call names that
    nobody owned included), strongest first; how many persons (folds of one person count
    apart) and held calls went; `person_ids` the persons' ids; `others` how many identifiers
    the call names that belong to someone else and were left with them; `seq` the erasure's
    tombstone mark; `again` when this erasure had been applied before (a re-read of its delete
    call): nothing was removed now, `identifiers` are the ones removed then (none once it was
    settled)."""

    identifiers: tuple[Identifier, ...]
    persons: int = 0
    held: int = 0
    again: bool = False
    person_ids: tuple[str, ...] = ()
    others: int = 0
    seq: int = 0

    def encode(self, created: float) -> bytes:
        """The erasure entry kept until Klaviyo has the deletion confirmed (its identifiers:
        personal data, for as long as that takes)."""
        return orjson.dumps({
            "identifiers": self.identifiers, "persons": self.persons,
            "person_ids": self.person_ids, "others": self.others, "seq": self.seq,
            "created": created,
        })  # fmt: skip

    @staticmethod
    def decode(payload: bytes | str) -> Forgotten:
        """A stored erasure entry, read again: `again` is set."""
        raw = orjson.loads(payload)
        ids = tuple((kind, value) for kind, value in raw["identifiers"])
        return Forgotten(
            ids,  # type: ignore[arg-type]
            int(raw.get("persons", 0)),
            0,
            again=True,
            person_ids=tuple(raw.get("person_ids", ())),
            others=int(raw.get("others", 0)),
            seq=int(raw.get("seq", 0)),
        )

    @staticmethod
    def created(payload: bytes) -> float:
        """When a stored erasure entry was written (0 for an older release's entry)."""
        return float(orjson.loads(payload).get("created", 0.0))


def comes_after(tomb: Tombstone, deleted_at: float, position: Position | None) -> bool:
    """Whether a deletion (its time, where its delete call sits) comes after the one `tomb`
    records: on the same partition Kafka's order decides, elsewhere the time (the rule calls
    are judged by, `stream.identity.tombstones.older`). A store keeps one tombstone per
    identifier: the last deletion by this order, at the latest time of any."""
    if position is not None and tomb.position is not None and position[:2] == tomb.position[:2]:
        return position[2] > tomb.position[2]
    return deleted_at > tomb.deleted_at


def tombstone_hash(identifier: Identifier) -> str:
    """A deleted identifier as its tombstone keeps it: SHA-256 (hex) of `kind:value`."""
    return hashlib.sha256(f"{identifier[0]}:{identifier[1]}".encode()).hexdigest()


class StateStore(CatalogStore, Protocol):
    """Dedup window + identity graph (+ the catalog's part, `CatalogStore`); every method is one
    atomic step (one round trip in Redis)."""

    lease_seconds: float  # how long a released held call stays leased to its sender
    lease_owner: str  # the replica that leases what this store releases ("" unknown)

    def link(
        self,
        identifiers: Sequence[Identifier],
        traits: Mapping[str, Any] | None = None,
        timestamp: float = 0.0,
        now: float | None = None,
        first: Identifier | None = None,
        guard: Guard | None = None,
    ) -> LinkResult:
        """Link a call's identifiers by the identity rules (`stream.state.rules`): the call is
        attributed to the owner of its strongest identifier (`first`, when given, is taken as
        the strongest: an alias's previous id); other owners are joined into it unless a
        kind's limit forbids it. Traits merge into that person per key: a trait replaces the
        stored one only if `timestamp` >= that key's stored timestamp. If the person is named
        afterwards, payloads held under its anonymous ids are returned, oldest first, and leased
        until `now` + the lease time: they stay stored until `settle_held`, and are not released
        again meanwhile. Raises ValueError if `identifiers` is empty.

        `guard`, when given, sees the tombstones of the identifiers in the same atomic step:
        when it answers True (the call is older than a deletion of one of them) nothing is
        linked and the result is `tombstoned`, so no replica, however late it learns of a
        deletion, brings the erased person back into the graph.
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
        """Leased payloads whose lease ran out by `now`, or whose lease owner (the replica that
        released them, `lease_owner`) is no longer alive (`live_replicas`): leased again to
        this store's owner and returned, oldest first."""
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

    def unmark(self, message_ids: Sequence[str]) -> None:
        """Forget these message ids as delivered (a released held call, remembered when it was
        held, that Klaviyo then refused: its replay must not be dropped as a duplicate)."""
        ...

    def prune(self, now: float) -> int:
        """Drop dedup keys older than the window; return how many were removed."""
        ...

    def stats(self) -> dict[str, int]:
        """Sizes for metrics: persons, identifiers, dedup_keys, held."""
        ...

    def forget(
        self,
        identifiers: Sequence[Identifier],
        deleted_at: float,
        erasure_id: str,
        position: Position | None = None,
    ) -> Forgotten:
        """Erase the person a delete call naming `identifiers` resolves to (`plan_erasure`:
        the owner of its strongest identifier and whom the rules join to it), in one atomic
        step: their identifiers, traits and held calls (held under their anonymous ids) are
        removed; a tombstone (`tombstone_hash`; the latest `deleted_at`, this erasure's new
        mark, and the `erasure_id` and `position` of the last deletion by `comes_after`) is
        kept for each of their identifiers and each of `identifiers` nobody owned; identifiers
        owned by someone else are left with them (counted in `others`); an erasure entry
        `erasure_id` (PENDING) remembers what was removed until `settle_erasure`.

        Read again, a deletion changes nothing: if its entry exists its identifiers are
        returned (`again`) and it is PENDING again; if it was applied and settled before (a
        tombstone of `identifiers` names it, or none of them records a deletion it
        `comes_after`), nothing is returned (`again`, no identifiers): whoever holds them now
        came after it.
        """
        ...

    def settle_erasure(self, erasure_id: str) -> None:
        """Delete an erasure entry: Klaviyo has the deletion, confirmed."""
        ...

    def reopen_erasure(self, erasure_id: str) -> Forgotten | None:
        """The erasure entry `erasure_id`, PENDING again (its deletion is sent again: a replay
        of a dead letter that kept no identifier), or None when it is gone."""
        ...

    def fail_erasure(self, erasure_id: str) -> None:
        """Keep an erasure entry as FAILED (its deletion was dead-lettered): a replay of the
        delete call sends it again; calls newer than it no longer wait for it."""
        ...

    def open_erasures(self) -> set[str]:
        """Ids of the erasures still PENDING (being deleted at Klaviyo by some replica)."""
        ...

    def purge_erasures(self, older_than: float) -> int:
        """Delete FAILED erasure entries written before `older_than` (Unix seconds): their
        identifiers are not kept longer than that. Returns how many went."""
        ...

    def tombstones(
        self, after: int = 0, limit: int = 10_000
    ) -> tuple[list[tuple[str, Tombstone]], int]:
        """Tombstones written after mark `after` (at most about `limit`, whole erasures), as
        (hash, tombstone), and the mark to pass next time (the newest one read)."""
        ...

    def tombstone_mark(self) -> int:
        """The newest tombstone mark written (0: none)."""
        ...

    def tombstone_rows(self, hashes: Sequence[str]) -> dict[str, Tombstone]:
        """The tombstones of these hashes (those that have one)."""
        ...

    def tombstone_hashes(self, cursor: str = "", count: int = 10_000) -> tuple[list[str], str]:
        """Every tombstone hash, a page at a time: pass the returned cursor back; "" when done."""
        ...

    # replicas -----------------------------------------------------------------------------

    def publish_mark(self, replica: str, mark: int, ttl: float) -> None:
        """Replica `replica` is alive for `ttl` seconds more (on the store's clock), and
        nothing it began before tombstone mark `mark` can still reach Klaviyo."""
        ...

    def low_mark(self, grace: float = 0.0) -> int | None:
        """The lowest mark of the replicas alive within the last `grace` seconds (what a
        replica that died had on the wire may land that long after), None when there is none;
        older ones are forgotten."""
        ...

    def live_replicas(self) -> set[str]:
        """Replicas whose last `publish_mark` has not expired."""
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
