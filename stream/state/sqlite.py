"""Embedded state store: one SQLite file in WAL mode, for a single consumer process.

Every multi-row update runs in one `BEGIN IMMEDIATE` transaction, so a crash leaves either the
whole link/hold or none of it. `synchronous=NORMAL` in WAL mode can lose the last transactions
on power loss (never corrupts); the Kafka offsets are stored after delivery, so those records
are replayed and `unique_id` at Klaviyo refuses duplicates.

`link` is on the hot path of every identify call, so it runs few statements: one read fetches
the owners of the identifiers with their identifiers and traits, the touch counter and whether
anything is held for their anonymous ids; multi-row upserts follow; the returned person is
computed from what was read and written (read back only after a fold). Sequence numbers come
from blocks reserved in the counter (see `_touch`). A named person's rows are kept after a
link, so the next link naming only identifiers it has skips the read: `PRAGMA data_version`
tells whether any other connection wrote the file since, and if one did nothing kept is used.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from stream.core.errors import StateError
from stream.state.base import (
    DEFAULT_DEDUP_WINDOW,
    FAILED,
    HELD_LEASE_SECONDS,
    PENDING,
    Forgotten,
    Guard,
    HeldEntry,
    Identifier,
    LinkResult,
    Person,
    Position,
    Tombstone,
    build_person,
    check_identifiers,
    comes_after,
    tombstone_hash,
)
from stream.state.catalog_sqlite import CATALOG_SCHEMA, SqliteCatalog
from stream.state.rules import (
    DEFAULT_LIMITS,
    Limits,
    Plan,
    ordered_identifiers,
    plan_erasure,
    plan_link,
)

_CHUNK = 500  # bound on SQL variables per statement
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    merged_into INTEGER            -- forwarding row: set when folded into another person
);
CREATE TABLE IF NOT EXISTS identifiers (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    person INTEGER NOT NULL,
    last_seen REAL NOT NULL,
    seq INTEGER NOT NULL,          -- tie-break for equal last_seen: later touch first
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identifiers_person ON identifiers (person);
CREATE TABLE IF NOT EXISTS traits (
    person INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,           -- JSON
    ts REAL NOT NULL,
    PRIMARY KEY (person, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    anonymous_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    held_at REAL NOT NULL,
    lease_until REAL,              -- released, being sent: deleted once finished
    lease_owner TEXT               -- the replica sending it (reclaimed once it is gone)
);
CREATE INDEX IF NOT EXISTS held_anon ON held (anonymous_id, seq);
CREATE INDEX IF NOT EXISTS held_time ON held (held_at, seq);
CREATE TABLE IF NOT EXISTS dedup (
    message_id TEXT PRIMARY KEY,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_at ON dedup (at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters VALUES ('touch', 0), ('held_count', 0), ('held_bytes', 0);
CREATE TABLE IF NOT EXISTS tombstones (
    hash TEXT PRIMARY KEY,         -- SHA-256 of a deleted identifier's kind:value
    deleted_at REAL NOT NULL,      -- the latest deletion's time
    seq INTEGER NOT NULL,          -- write mark, for readers that follow new tombstones
    extra TEXT NOT NULL DEFAULT '' -- that deletion's erasure id and the delete call's position
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones (seq);
CREATE TABLE IF NOT EXISTS erasures (
    id TEXT PRIMARY KEY,           -- the delete call's message id
    payload BLOB NOT NULL,         -- the identifiers removed, until Klaviyo has the deletion
    created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,           -- one running service
    mark INTEGER NOT NULL,         -- nothing it began before this tombstone mark is still out
    expires REAL NOT NULL          -- alive until then
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters VALUES ('tombstone', 0);
"""
# Layout versions (PRAGMA user_version) and the steps that bring an older file up to date.
# v1: leased held rows; tombstones and erasures (new tables, created by the schema).
# v2: tombstones name their erasure and position, erasures their state, leases their owner;
#     replicas and the catalog's tables (`catalog_sqlite.CATALOG_SCHEMA`): new tables.
LAYOUT_VERSION = 2
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE held ADD COLUMN lease_until REAL",),  # releases stay until finished
    2: (
        "ALTER TABLE held ADD COLUMN lease_owner TEXT",
        "ALTER TABLE tombstones ADD COLUMN extra TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE erasures ADD COLUMN status TEXT NOT NULL DEFAULT 'pending'",
    ),
}
_LAYOUT_INDEXES = """
CREATE INDEX IF NOT EXISTS held_lease ON held (lease_until) WHERE lease_until IS NOT NULL;
"""


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_NEW_PERSON = "INSERT INTO persons (created) VALUES (?) RETURNING id"
_RESERVE = "UPDATE counters SET value = value + ? WHERE name = 'touch' RETURNING value"
_SEQ_BLOCK = 1024  # touch sequence numbers reserved per counter write
_ROWS = 64  # rows per multi-row upsert statement
_KEPT_PERSONS = 10_000  # persons whose rows are kept between links (then all are dropped)
# `person` is not set on conflict: after the folds every existing row is the survivor's already,
# and leaving it out keeps the `identifiers_person` index untouched.
_UPSERT_IDENTIFIERS = (
    "INSERT INTO identifiers (kind, value, person, last_seen, seq) VALUES {rows}"
    " ON CONFLICT (kind, value) DO UPDATE SET"
    " seq = CASE WHEN excluded.last_seen >= last_seen THEN excluded.seq ELSE seq END,"
    " last_seen = max(last_seen, excluded.last_seen)"
)
_UPSERT_TRAITS = (
    "INSERT INTO traits (person, key, value, ts) VALUES {rows}"
    " ON CONFLICT (person, key) DO UPDATE SET value = excluded.value,"
    " ts = excluded.ts WHERE excluded.ts >= traits.ts"
)
_LOAD = (  # identifier rows have a kind, trait rows none
    "SELECT kind, value, last_seen, seq FROM identifiers WHERE person = ?1"
    " UNION ALL SELECT NULL, key, value, ts FROM traits WHERE person = ?1"
)
_SQL: dict[tuple[str, int], str] = {}
_Rows = dict[Identifier, tuple[float, int]]  # a person's identifiers -> (last_seen, seq)
_Traits = dict[str, tuple[bytes, float]]  # a person's trait keys -> (JSON, ts)


def _read_sql(count: int) -> str:
    """The read of `link` for `count` identifiers: rows (person, kind, value, last_seen, seq) of
    the owners' identifiers, (person, NULL, key, value, ts) of their traits, and one row
    (NULL, NULL, NULL, touch counter, anything held under their or the new anonymous ids)."""
    sql = _SQL.get(("read", count))
    if sql is None:
        values = ",".join(["(?,?)"] * count)
        sql = _SQL[("read", count)] = (  # CROSS JOIN: SQLite keeps this order (index lookups)
            f"WITH ids (kind, value) AS (VALUES {values}),"
            " owners (person) AS (SELECT DISTINCT i.person FROM ids"
            " CROSS JOIN identifiers i ON i.kind = ids.kind AND i.value = ids.value)"
            " SELECT i.person, i.kind, i.value, i.last_seen, i.seq"
            " FROM owners o CROSS JOIN identifiers i ON i.person = o.person"
            " UNION ALL SELECT t.person, NULL, t.key, t.value, t.ts"
            " FROM owners o CROSS JOIN traits t ON t.person = o.person"
            " UNION ALL SELECT NULL, NULL, NULL, c.value,"
            " EXISTS (SELECT 1 FROM ids CROSS JOIN held h ON h.anonymous_id = ids.value"
            " WHERE ids.kind = 'anonymous_id' AND h.lease_until IS NULL)"
            " OR EXISTS (SELECT 1 FROM owners o CROSS JOIN identifiers i"
            " ON i.person = o.person AND i.kind = 'anonymous_id'"
            " CROSS JOIN held h ON h.anonymous_id = i.value WHERE h.lease_until IS NULL)"
            " FROM counters c WHERE c.name = 'touch'"
        )
    return sql


def _upsert(db: sqlite3.Connection, sql: str, width: int, params: list[Any]) -> None:
    """Run the multi-row `sql` ({rows} placeholder) over `params`, `width` values per row."""
    step = _ROWS * width
    for start in range(0, len(params), step):
        part = params[start : start + step] if len(params) > step else params
        count = len(part) // width
        text = _SQL.get((sql, count))
        if text is None:
            row = "(" + ",".join("?" * width) + ")"
            text = _SQL[(sql, count)] = sql.format(rows=",".join([row] * count))
        db.execute(text, part)


class SqliteStore(SqliteCatalog):
    """State in one SQLite file (or `:memory:`); thread-safe through one lock, one connection.
    The catalog's tables and methods are `SqliteCatalog`'s."""

    def __init__(
        self,
        path: str,
        dedup_window_seconds: float = DEFAULT_DEDUP_WINDOW,
        lease_seconds: float = HELD_LEASE_SECONDS,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.path = path
        self.window = float(dedup_window_seconds)
        self.lease_seconds = float(lease_seconds)
        self.lease_owner = ""
        self.limits = limits
        self._lock = threading.Lock()
        self._seq = (0, -1)  # touch numbers of this connection: (last used, end of its block)
        # rows of named persons as this connection last wrote them, and identifier -> person
        self._kept: dict[int, tuple[_Rows, _Traits]] = {}
        self._owner: dict[Identifier, int] = {}
        self._version = -1  # PRAGMA data_version when last asked
        try:
            self._db = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
                cached_statements=256,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=10000")  # fewer checkpoint fsyncs
            # 64 MiB of page cache (SQLite's default is 2 MiB): the dedup window's random
            # message-id keys touch pages all over its B-tree
            self._db.execute("PRAGMA cache_size=-65536")
            self._layout()
            # asked now: left at -1, the first link of a kept person found it "changed" and
            # dropped every kept row (in the mix benchmark, 6,000 links read again)
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StateError(f"cannot open SQLite state {path!r}: {exc}", retriable=False) from exc

    def _layout(self) -> None:
        """Create the tables, or bring a file written by an older release up to date (one
        transaction); a file of a newer layout than this release knows is refused."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            existed = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'held'").fetchone()
            if version > LAYOUT_VERSION:
                raise StateError(
                    f"SQLite state {self.path!r} has layout v{version}, newer than this"
                    f" release's v{LAYOUT_VERSION}: upgrade klaviyo-stream",
                    retriable=False,
                )
            if existed:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                for step in range(version + 1, LAYOUT_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        table = statement.split()[2]
                        if table in tables:  # a table an older layout lacked is made new
                            db.execute(statement)
            for statement in (_SCHEMA + _LAYOUT_INDEXES + CATALOG_SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _run(self, begin: str, body: Callable[..., _T], *args: Any) -> _T:
        """`body(db, *args)` in one transaction under the lock; rolls back on error and maps
        sqlite errors."""
        with self._lock:
            db = self._db
            try:
                db.execute(begin)
                try:
                    out = body(db, *args)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return out
            except BaseException as exc:
                self._forget()  # rolled back: a reservation or kept rows may be undone
                if isinstance(exc, sqlite3.OperationalError):
                    locked = "locked" in str(exc) or "busy" in str(exc)
                    raise StateError(f"SQLite state: {exc}", retriable=locked) from exc
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"SQLite state: {exc}", retriable=False) from exc
                raise

    # identity ---------------------------------------------------------------------------

    def link(
        self,
        identifiers: Sequence[Identifier],
        traits: Mapping[str, Any] | None = None,
        timestamp: float = 0.0,
        now: float | None = None,
        first: Identifier | None = None,
        guard: Guard | None = None,
    ) -> LinkResult:
        """See StateStore.link; one IMMEDIATE transaction."""
        ids = ordered_identifiers(identifiers, first)
        lease = (time.time() if now is None else now) + self.lease_seconds
        return self._run(
            "BEGIN IMMEDIATE", self._link, ids, traits, float(timestamp), lease, guard
        )

    def _link(
        self,
        db: sqlite3.Connection,
        ids: list[Identifier],
        traits: Mapping[str, Any] | None,
        ts: float,
        lease_until: float,
        guard: Guard | None = None,
    ) -> LinkResult:
        survivor = self._known(db, ids)  # kept rows: nobody wrote since, no new tombstone
        if survivor is None and guard is not None:
            tombs = _tombstone_rows(db, [tombstone_hash(ident) for ident in ids])
            if tombs and guard(tombs):
                return LinkResult(Person("", {}, {}), (), (), tombstoned=True)
        plan: Plan | None = None
        if survivor is not None:  # kept rows are the stored ones: nothing to read
            known, stored = self._kept[survivor]
            touch, held = self._seq[1], False  # named: its held calls were released
        else:
            rows, traits_of, owners, touch, held = self._read(db, ids)
            plan = plan_link(ids, {i: str(p) for i, p in owners.items()}, _holdings(rows), ts,
                             self.limits)
            if plan.anchor is None:
                survivor = db.execute(_NEW_PERSON, (ts,)).fetchone()[0]
            else:
                survivor = int(plan.anchor)
            known = rows.get(survivor, {})
            stored = traits_of.get(survivor, {})
            for loser in plan.fold:
                self._fold(db, int(loser), survivor)
            for kind, value in plan.move:
                db.execute(
                    "UPDATE identifiers SET person = ? WHERE kind = ? AND value = ?",
                    (survivor, kind, value),
                )
            for kind, value in plan.detach:
                db.execute(
                    "DELETE FROM identifiers WHERE kind = ? AND value = ? AND person = ?",
                    (kind, value, survivor),
                )
            ids = plan.attach
        linked = ids
        seq = self._touch(db, touch, len(linked))
        # `known` and `stored` follow the upserts below, so they end as the survivor's rows;
        # after a fold, a move or a detach they are not exact and the person is read back
        exact = plan is None or not (plan.fold or plan.move or plan.detach)
        params: list[Any] = []
        for ident in linked:
            params += (ident[0], ident[1], survivor, ts, seq)
            old = known.get(ident)
            if old is None or ts >= old[0]:
                known[ident] = (ts, seq)  # last_seen = max(old, ts)
            seq -= 1
        if params:
            _upsert(db, _UPSERT_IDENTIFIERS, 5, params)
        if traits:
            params = []
            for key, value in traits.items():
                blob = orjson.dumps(value)
                if exact and type(key) is str:
                    before = stored.get(key)
                    if before is not None and (
                        ts < before[1] or (ts == before[1] and blob == before[0])
                    ):
                        continue  # the upsert would leave the row as it is
                    stored[key] = (memoryview(blob).tobytes(), ts)  # orjson's is 4 KiB
                else:
                    exact = False  # SQLite may coerce the key: read it back
                params += (survivor, key, blob, ts)
            if params:
                _upsert(db, _UPSERT_TRAITS, 4, params)
        if exact:
            person = build_person(
                str(survivor),
                [(kind, value, last, seq) for (kind, value), (last, seq) in known.items()],
                {key: orjson.loads(stored[key][0]) for key in sorted(stored)},  # key order
            )
        else:
            person = self._load(db, survivor)
        released: tuple[HeldEntry, ...] = ()
        if held and person.named and person.identifiers.get("anonymous_id"):
            released = self._release(
                db, person.identifiers["anonymous_id"], lease_until, self.lease_owner
            )
        losers = [int(x) for x in plan.fold] if plan is not None else []
        for other in [*losers, *(int(x) for x in plan.refused_persons)] if plan else []:
            self._kept.pop(other, None)
        if exact and person.named:
            self._keep(survivor, known, stored)
        else:
            self._kept.pop(survivor, None)
        return LinkResult(
            person,
            tuple(str(x) for x in losers),
            released,
            refused=tuple(plan.refused) if plan is not None else (),
            refused_persons=tuple(plan.refused_persons) if plan is not None else (),
        )

    def _read(
        self, db: sqlite3.Connection, ids: list[Identifier]
    ) -> tuple[dict[int, _Rows], dict[int, _Traits], dict[Identifier, int], int, bool]:
        """The owners' rows and traits per person, who owns which of `ids`, the touch
        counter, and whether anything is held under the anonymous ids involved."""
        found = db.execute(_read_sql(len(ids)), [x for pair in ids for x in pair]).fetchall()
        rows: dict[int, _Rows] = {}
        traits: dict[int, _Traits] = {}
        touch, held = 0, False
        for owner, kind, value, first, second in found:
            if owner is None:
                touch, held = first, bool(second)
                continue
            if kind is not None:
                rows.setdefault(owner, {})[(kind, value)] = (first, second)
            else:
                traits.setdefault(owner, {})[value] = (first, second)
        owners = {ident: person for person, own in rows.items() for ident in own if ident in ids}
        return rows, traits, owners, touch, held

    def _known(self, db: sqlite3.Connection, ids: list[Identifier]) -> int | None:
        """The kept person owning all of `ids`, if no other connection wrote meanwhile."""
        person = self._owner.get(ids[0])
        if person is None or person not in self._kept or self._seq[1] < 0:
            return None
        rows = self._kept[person][0]
        for ident in ids:  # kept rows, not the owner map: an identifier may have moved away
            if ident not in rows:
                return None
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:  # another connection committed since we last asked
            self._version = version
            self._kept.clear()
            self._owner.clear()
            return None
        return person

    def _keep(self, person: int, known: _Rows, stored: _Traits) -> None:
        """Keep a named person's rows as just written (all are dropped at the size bound)."""
        if person not in self._kept and len(self._kept) >= _KEPT_PERSONS:
            self._kept.clear()
            self._owner.clear()
        self._kept[person] = (known, stored)
        for ident in known:
            self._owner[ident] = person

    def _forget(self) -> None:
        """Drop what this connection remembers of the file (reserved numbers, kept rows)."""
        self._seq = (0, -1)
        self._kept.clear()
        self._owner.clear()

    def _touch(self, db: sqlite3.Connection, counter: int, count: int) -> int:
        """The top of `count` new touch sequence numbers (the others follow it downwards).

        Numbers come from a block reserved in the `touch` counter, without writing it, for as
        long as the counter still ends at this connection's block: any other writer's
        reservation moves it, and the next call reserves a new block above. So every call
        gets larger numbers than every call committed before it, as with one write per call.
        """
        used, bound = self._seq
        top = used + count
        if counter != bound or top > bound:
            bound = db.execute(_RESERVE, (max(_SEQ_BLOCK, count),)).fetchone()[0]
            top = counter + count
        self._seq = (top, bound)
        return top

    @staticmethod
    def _fold(db: sqlite3.Connection, loser: int, survivor: int) -> None:
        """Move the loser's identifiers and traits (newer per key wins) to the survivor."""
        db.execute("UPDATE identifiers SET person = ? WHERE person = ?", (survivor, loser))
        db.execute(
            "INSERT INTO traits (person, key, value, ts)"
            " SELECT ?, key, value, ts FROM traits WHERE person = ? AND true"
            " ON CONFLICT (person, key) DO UPDATE SET value = excluded.value, ts = excluded.ts"
            " WHERE excluded.ts > traits.ts",
            (survivor, loser),
        )
        db.execute("DELETE FROM traits WHERE person = ?", (loser,))
        db.execute(
            "UPDATE persons SET merged_into = ? WHERE id = ? OR merged_into = ?",
            (survivor, loser, loser),
        )

    @staticmethod
    def _load(db: sqlite3.Connection, person_id: int) -> Person:
        rows = []
        traits = {}
        for kind, value, first, second in db.execute(_LOAD, (person_id,)):
            if kind is None:
                traits[value] = orjson.loads(first)
            else:
                rows.append((kind, value, first, second))
        return build_person(str(person_id), rows, traits)

    @staticmethod
    def _release(
        db: sqlite3.Connection, anonymous_ids: Sequence[str], lease_until: float, owner: str
    ) -> tuple[HeldEntry, ...]:
        """Lease the payloads held under `anonymous_ids`, oldest first: they stay in the store
        until `settle_held` (delivered) or the lease runs out (`reclaim_held`)."""
        rows: list[tuple[float, int, str, bytes]] = []
        for part in _chunks(anonymous_ids):
            marks = ",".join("?" * len(part))
            rows += db.execute(
                f"UPDATE held SET lease_until = ?, lease_owner = ? WHERE anonymous_id IN"
                f" ({marks}) AND lease_until IS NULL"
                " RETURNING held_at, seq, anonymous_id, payload",
                (lease_until, owner, *part),
            ).fetchall()
        rows.sort()
        return tuple(HeldEntry(str(seq), anon, bytes(payload)) for _, seq, anon, payload in rows)

    def lookup(self, identifier: Identifier) -> Person | None:
        """See StateStore.lookup."""
        return self._run("BEGIN", self._lookup, identifier)

    def _lookup(self, db: sqlite3.Connection, identifier: Identifier) -> Person | None:
        row = db.execute(
            "SELECT person FROM identifiers WHERE kind = ? AND value = ?", identifier
        ).fetchone()
        return None if row is None else self._load(db, row[0])

    # held payloads ----------------------------------------------------------------------

    def hold(self, anonymous_id: str, payload: bytes, now: float) -> Person | None:
        """See StateStore.hold; one IMMEDIATE transaction."""
        return self._run("BEGIN IMMEDIATE", self._hold, anonymous_id, payload, float(now))

    def _hold(
        self, db: sqlite3.Connection, anonymous_id: str, payload: bytes, now: float
    ) -> Person | None:
        row = db.execute(
            "SELECT i.person, EXISTS (SELECT 1 FROM identifiers n"
            " WHERE n.person = i.person AND n.kind != 'anonymous_id')"
            " FROM identifiers i WHERE i.kind = 'anonymous_id' AND i.value = ?",
            (anonymous_id,),
        ).fetchone()
        if row is not None and row[1]:
            return self._load(db, row[0])
        if row is not None:
            self._kept.pop(row[0], None)  # unnamed persons are not kept; to be sure
        db.execute(
            "INSERT INTO held (anonymous_id, payload, held_at) VALUES (?,?,?)",
            (anonymous_id, payload, now),
        )
        _bump_held(db, 1, len(payload))
        return None

    def expire_held(
        self, older_than: float, limit: int = 1000, lease_until: float | None = None
    ) -> list[HeldEntry]:
        """See StateStore.expire_held."""
        return self._run(
            "BEGIN IMMEDIATE", _expire, float(older_than), int(limit), lease_until,
            self.lease_owner,
        )

    def reclaim_held(self, now: float, limit: int = 1000) -> list[HeldEntry]:
        """See StateStore.reclaim_held; a lease owner is alive while its `replicas` row has not
        expired (this host's clock: SQLite serves one host)."""
        return self._run(
            "BEGIN IMMEDIATE", _reclaim, float(now), int(limit),
            float(now) + self.lease_seconds, self.lease_owner, time.time(),
        )

    def settle_held(self, entry_ids: Sequence[str]) -> None:
        """See StateStore.settle_held."""
        if entry_ids:
            self._run("BEGIN IMMEDIATE", _settle, [int(e) for e in entry_ids])

    def held_count(self) -> int:
        """See StateStore.held_count."""
        return self._counter("held_count")

    def held_bytes(self) -> int:
        """See StateStore.held_bytes."""
        return self._counter("held_bytes")

    def _counter(self, name: str) -> int:
        row = self._run("BEGIN", _fetchone, "SELECT value FROM counters WHERE name = ?", (name,))
        return int(row[0])

    # dedup ------------------------------------------------------------------------------

    def seen(self, message_ids: Sequence[str]) -> set[str]:
        """See StateStore.seen; entries older than the window no longer count, pruned or not."""
        if not message_ids:
            return set()
        return self._run("BEGIN", _seen, list(message_ids), time.time() - self.window)

    def mark_delivered(self, message_ids: Sequence[str], now: float) -> None:
        """See StateStore.mark_delivered; one transaction for the batch."""
        if not message_ids:
            return
        at = float(now)
        self._run(
            "BEGIN IMMEDIATE",
            _executemany,
            "INSERT INTO dedup (message_id, at) VALUES (?, ?)"
            " ON CONFLICT (message_id) DO UPDATE SET at = max(at, excluded.at)",
            [(m, at) for m in message_ids],
        )

    def unmark(self, message_ids: Sequence[str]) -> None:
        """See StateStore.unmark."""
        if message_ids:
            self._run(
                "BEGIN IMMEDIATE", _executemany, "DELETE FROM dedup WHERE message_id = ?",
                [(m,) for m in message_ids],
            )

    def prune(self, now: float) -> int:
        """See StateStore.prune; uses the index on `at`."""
        return self._run(
            "BEGIN IMMEDIATE",
            _rowcount,
            "DELETE FROM dedup WHERE at <= ?",
            (float(now) - self.window,),
        )

    # erasure ----------------------------------------------------------------------------

    def forget(
        self,
        identifiers: Sequence[Identifier],
        deleted_at: float,
        erasure_id: str,
        position: Position | None = None,
    ) -> Forgotten:
        """See StateStore.forget; one IMMEDIATE transaction."""
        ids = check_identifiers(identifiers)
        return self._run(
            "BEGIN IMMEDIATE", self._erase, ids, float(deleted_at), erasure_id, position
        )

    def _erase(
        self,
        db: sqlite3.Connection,
        ids: list[Identifier],
        deleted_at: float,
        erasure_id: str,
        position: Position | None,
    ) -> Forgotten:
        row = db.execute("SELECT payload FROM erasures WHERE id = ?", (erasure_id,)).fetchone()
        if row is not None:
            db.execute("UPDATE erasures SET status = ? WHERE id = ?", (PENDING, erasure_id))
            return Forgotten.decode(row[0])
        before = _tombstone_rows(db, [tombstone_hash(ident) for ident in ids])
        if len(before) == len(ids) and (
            any(tomb.erasure == erasure_id for tomb in before.values())
            or not any(comes_after(tomb, deleted_at, position) for tomb in before.values())
        ):
            return Forgotten((), again=True)  # applied before: those holding them came after
        rows, _traits, owners, _touch, _held = self._read(db, ids)
        plan = plan_erasure(ids, {i: str(p) for i, p in owners.items()}, _holdings(rows),
                            self.limits)  # fmt: skip
        removed: list[Identifier] = []
        for person in plan.persons:
            for kind, value in db.execute(
                "SELECT kind, value FROM identifiers WHERE person = ? ORDER BY seq DESC",
                (int(person),),
            ).fetchall():
                if (kind, value) not in removed:
                    removed.append((kind, value))
            db.execute("DELETE FROM identifiers WHERE person = ?", (int(person),))
            db.execute("DELETE FROM traits WHERE person = ?", (int(person),))
            db.execute(
                "DELETE FROM persons WHERE id = ? OR merged_into = ?", (int(person), int(person))
            )
        removed += [ident for ident in plan.unowned if ident not in removed]
        removed.sort(key=lambda ident: (ident not in ids, ids.index(ident) if ident in ids else 0))
        count = size = 0
        for kind, value in removed:
            if kind != "anonymous_id":
                continue
            for (length,) in db.execute(  # held or leased: both hold the person's calls
                "DELETE FROM held WHERE anonymous_id = ? RETURNING length(payload)", (value,)
            ).fetchall():
                count += 1
                size += length
        if count:
            _bump_held(db, -count, -size)
        seq = db.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'tombstone' RETURNING value"
        ).fetchone()[0]
        mine = Tombstone(deleted_at, seq, erasure_id, position)
        hashes = [tombstone_hash(ident) for ident in removed]
        known = _tombstone_rows(db, hashes)
        written: list[tuple[str, float, int, str]] = []
        for digest in hashes:
            old = known.get(digest)
            if old is None:
                written.append((digest, deleted_at, seq, mine.encode()))
            else:  # one deletion came after the other (see `comes_after`)
                last = old if comes_after(mine, old.deleted_at, old.position) else mine
                written.append((digest, max(deleted_at, old.deleted_at), seq, last.encode()))
        db.executemany(
            "INSERT INTO tombstones (hash, deleted_at, seq, extra) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (hash) DO UPDATE SET seq = excluded.seq, extra = excluded.extra,"
            " deleted_at = excluded.deleted_at",
            written,
        )
        forgotten = Forgotten(
            tuple(removed), len(plan.persons), count, person_ids=tuple(plan.persons),
            others=len(plan.others), seq=seq,
        )  # fmt: skip
        db.execute(
            "INSERT INTO erasures (id, payload, created, status) VALUES (?, ?, ?, ?)",
            (erasure_id, forgotten.encode(time.time()), time.time(), PENDING),
        )
        self._kept.clear()  # rows kept of a forgotten person must not answer a later link
        self._owner.clear()
        return forgotten

    def settle_erasure(self, erasure_id: str) -> None:
        """See StateStore.settle_erasure."""
        self._run("BEGIN IMMEDIATE", _rowcount, "DELETE FROM erasures WHERE id = ?", (erasure_id,))

    def reopen_erasure(self, erasure_id: str) -> Forgotten | None:
        """See StateStore.reopen_erasure."""
        return self._run("BEGIN IMMEDIATE", _reopen, erasure_id)

    def fail_erasure(self, erasure_id: str) -> None:
        """See StateStore.fail_erasure."""
        self._run(
            "BEGIN IMMEDIATE", _rowcount, "UPDATE erasures SET status = ? WHERE id = ?",
            (FAILED, erasure_id),
        )

    def open_erasures(self) -> set[str]:
        """See StateStore.open_erasures."""
        rows = self._run(
            "BEGIN", _fetchall, "SELECT id FROM erasures WHERE status = ?", (PENDING,)
        )
        return {str(r[0]) for r in rows}

    def purge_erasures(self, older_than: float) -> int:
        """See StateStore.purge_erasures."""
        return self._run(
            "BEGIN IMMEDIATE", _rowcount,
            "DELETE FROM erasures WHERE status = ? AND created < ?", (FAILED, float(older_than)),
        )

    def tombstones(
        self, after: int = 0, limit: int = 10_000
    ) -> tuple[list[tuple[str, Tombstone]], int]:
        """See StateStore.tombstones; uses the index on the write mark."""
        rows = self._run(
            "BEGIN",
            _fetchall,
            "SELECT hash, deleted_at, seq, extra FROM tombstones WHERE seq > ?"
            " AND seq <= (SELECT coalesce(max(seq), 0) FROM (SELECT seq FROM tombstones"
            " WHERE seq > ? ORDER BY seq LIMIT ?)) ORDER BY seq",
            (int(after), int(after), int(limit)),
        )
        last = max((int(r[2]) for r in rows), default=int(after))
        return [(str(h), Tombstone.decode(float(at), int(s), x)) for h, at, s, x in rows], last

    def tombstone_mark(self) -> int:
        """See StateStore.tombstone_mark."""
        return self._counter("tombstone")

    def tombstone_rows(self, hashes: Sequence[str]) -> dict[str, Tombstone]:
        """See StateStore.tombstone_rows."""
        if not hashes:
            return {}
        return self._run("BEGIN", _tombstone_rows, list(hashes))

    def tombstone_hashes(self, cursor: str = "", count: int = 10_000) -> tuple[list[str], str]:
        """See StateStore.tombstone_hashes: pages in hash order."""
        rows = self._run(
            "BEGIN", _fetchall, "SELECT hash FROM tombstones WHERE hash > ? ORDER BY hash LIMIT ?",
            (cursor, int(count)),
        )
        found = [str(r[0]) for r in rows]
        return found, (found[-1] if len(found) == count else "")

    # replicas -----------------------------------------------------------------------------

    def publish_mark(self, replica: str, mark: int, ttl: float) -> None:
        """See StateStore.publish_mark (this host's clock)."""
        self._run(
            "BEGIN IMMEDIATE", _rowcount,
            "INSERT INTO replicas (id, mark, expires) VALUES (?, ?, ?) ON CONFLICT (id)"
            " DO UPDATE SET mark = excluded.mark, expires = excluded.expires",
            (replica, int(mark), time.time() + float(ttl)),
        )

    def low_mark(self, grace: float = 0.0) -> int | None:
        """See StateStore.low_mark."""
        row = self._run("BEGIN IMMEDIATE", _low_mark, time.time() - float(grace))
        return None if row is None else int(row)

    def live_replicas(self) -> set[str]:
        """See StateStore.live_replicas."""
        rows = self._run(
            "BEGIN", _fetchall, "SELECT id FROM replicas WHERE expires > ?", (time.time(),)
        )
        return {str(r[0]) for r in rows}

    # admin ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """See StateStore.stats."""
        return self._run("BEGIN", _stats)

    def close(self) -> None:
        """Close the connection (checkpoints the WAL)."""
        with self._lock:
            self._db.close()


def _holdings(rows: dict[int, _Rows]) -> dict[str, dict[Any, list[tuple[str, float]]]]:
    """Each person's identifiers as the identity rules read them: kind -> (value, last_seen)."""
    out: dict[str, dict[Any, list[tuple[str, float]]]] = {}
    for person, own in rows.items():
        kinds = out.setdefault(str(person), {})
        for (kind, value), (last_seen, _seq) in own.items():
            kinds.setdefault(kind, []).append((value, last_seen))
    return out


def _bump_held(db: sqlite3.Connection, count: int, size: int) -> None:
    db.execute(
        "UPDATE counters SET value = value + CASE name WHEN 'held_count' THEN ? ELSE ? END"
        " WHERE name IN ('held_count', 'held_bytes')",
        (count, size),
    )


def _tombstone_rows(db: sqlite3.Connection, hashes: list[str]) -> dict[str, Tombstone]:
    out: dict[str, Tombstone] = {}
    for part in _chunks(hashes):
        marks = ",".join("?" * len(part))
        for h, at, seq, extra in db.execute(
            f"SELECT hash, deleted_at, seq, extra FROM tombstones WHERE hash IN ({marks})",
            tuple(part),
        ):
            out[str(h)] = Tombstone.decode(float(at), int(seq), extra)
    return out


def _reopen(db: sqlite3.Connection, erasure_id: str) -> Forgotten | None:
    row = db.execute("SELECT payload FROM erasures WHERE id = ?", (erasure_id,)).fetchone()
    if row is None:
        return None
    db.execute("UPDATE erasures SET status = ? WHERE id = ?", (PENDING, erasure_id))
    return Forgotten.decode(row[0])


def _low_mark(db: sqlite3.Connection, now: float) -> int | None:
    db.execute("DELETE FROM replicas WHERE expires <= ?", (now,))
    return db.execute("SELECT min(mark) FROM replicas").fetchone()[0]  # type: ignore[no-any-return]


def _fetchone(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return db.execute(sql, params).fetchone()


def _fetchall(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _executemany(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    db.executemany(sql, rows)


def _rowcount(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return db.execute(sql, params).rowcount


def _expire(
    db: sqlite3.Connection, older_than: float, limit: int, lease_until: float | None, owner: str
) -> list[HeldEntry]:
    rows = db.execute(
        "SELECT seq, anonymous_id, payload FROM held WHERE held_at < ? AND lease_until IS NULL"
        " ORDER BY held_at, seq LIMIT ?",
        (older_than, limit),
    ).fetchall()
    if rows and lease_until is None:
        db.executemany("DELETE FROM held WHERE seq = ?", [(r[0],) for r in rows])
        _bump_held(db, -len(rows), -sum(len(r[2]) for r in rows))
    elif rows:
        db.executemany(
            "UPDATE held SET lease_until = ?, lease_owner = ? WHERE seq = ?",
            [(lease_until, owner, r[0]) for r in rows],
        )
    return [HeldEntry(str(seq), anon, bytes(payload)) for seq, anon, payload in rows]


def _reclaim(
    db: sqlite3.Connection, now: float, limit: int, lease_until: float, owner: str, wall: float
) -> list[HeldEntry]:
    rows = db.execute(
        "SELECT seq, anonymous_id, payload FROM held WHERE lease_until IS NOT NULL"
        " AND (lease_until <= ? OR (coalesce(lease_owner, '') NOT IN ('', ?)"
        " AND lease_owner NOT IN (SELECT id FROM replicas WHERE expires > ?)))"
        " ORDER BY held_at, seq LIMIT ?",
        (now, owner, wall, limit),
    ).fetchall()
    db.executemany(
        "UPDATE held SET lease_until = ?, lease_owner = ? WHERE seq = ?",
        [(lease_until, owner, r[0]) for r in rows],
    )
    return [HeldEntry(str(seq), anon, bytes(payload)) for seq, anon, payload in rows]


def _settle(db: sqlite3.Connection, seqs: list[int]) -> None:
    count = size = 0
    for part in _chunks(seqs):
        marks = ",".join("?" * len(part))
        for (length,) in db.execute(
            f"DELETE FROM held WHERE seq IN ({marks}) RETURNING length(payload)", tuple(part)
        ):
            count += 1
            size += length
    if count:
        _bump_held(db, -count, -size)


def _seen(db: sqlite3.Connection, message_ids: list[str], cutoff: float) -> set[str]:
    out: set[str] = set()
    for part in _chunks(message_ids):
        marks = ",".join("?" * len(part))
        out.update(
            r[0]
            for r in db.execute(
                f"SELECT message_id FROM dedup WHERE message_id IN ({marks}) AND at > ?",
                (*part, cutoff),
            )
        )
    return out


_STATS = {
    "persons": "SELECT count(*) FROM persons WHERE merged_into IS NULL",
    "identifiers": "SELECT count(*) FROM identifiers",
    "dedup_keys": "SELECT count(*) FROM dedup",
    "held": "SELECT value FROM counters WHERE name = 'held_count'",
}


def _stats(db: sqlite3.Connection) -> dict[str, int]:
    return {name: int(db.execute(sql).fetchone()[0]) for name, sql in _STATS.items()}
