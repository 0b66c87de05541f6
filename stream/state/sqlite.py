"""Embedded state store: one SQLite file in WAL mode, for a single consumer process.

Every multi-row update runs in one `BEGIN IMMEDIATE` transaction, so a crash leaves either the
whole link/hold or none of it. `synchronous=NORMAL` in WAL mode can lose the last transactions
on power loss (never corrupts); the Kafka offsets are stored after delivery, so those records
are replayed and `unique_id` at Klaviyo refuses duplicates.

`link` is on the hot path of every identify call, so it runs few statements: one read fetches
the owners of the identifiers with their identifiers and traits and whether anything is held
for their anonymous ids; the writes follow; the returned person is computed from what was read
and written (read back from the file only after a fold). Nothing is cached across transactions,
so another connection writing the same file never makes an answer stale.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from stream.state.base import (
    DEFAULT_DEDUP_WINDOW,
    Identifier,
    LinkResult,
    Person,
    StateError,
    build_person,
    check_identifiers,
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
    held_at REAL NOT NULL
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
"""


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_NEW_PERSON = "INSERT INTO persons (created) VALUES (?) RETURNING id"
_TOUCH = "UPDATE counters SET value = value + ? WHERE name = 'touch' RETURNING value"
# `person` is not set on conflict: after the folds every existing row is the survivor's already,
# and leaving it out keeps the `identifiers_person` index untouched.
_UPSERT_IDENTIFIER = (
    "INSERT INTO identifiers (kind, value, person, last_seen, seq) VALUES (?,?,?,?,?)"
    " ON CONFLICT (kind, value) DO UPDATE SET"
    " seq = CASE WHEN excluded.last_seen >= last_seen THEN excluded.seq ELSE seq END,"
    " last_seen = max(last_seen, excluded.last_seen)"
)
_UPSERT_TRAIT = (
    "INSERT INTO traits (person, key, value, ts) VALUES (?,?,?,?)"
    " ON CONFLICT (person, key) DO UPDATE SET value = excluded.value,"
    " ts = excluded.ts WHERE excluded.ts >= traits.ts"
)
# identifier rows have a kind, trait rows (person, NULL, key, value, ts); (NULL, ...) marks held
_LOAD = (
    "SELECT kind, value, last_seen, seq FROM identifiers WHERE person = ?1"
    " UNION ALL SELECT NULL, key, value, ts FROM traits WHERE person = ?1"
)
_OWNERS: dict[int, str] = {}


def _owners_sql(count: int) -> str:
    """The read of `link` for `count` identifiers (cached per count)."""
    sql = _OWNERS.get(count)
    if sql is None:
        values = ",".join(["(?,?)"] * count)
        sql = _OWNERS[count] = (  # CROSS JOIN: SQLite keeps this join order (index lookups)
            f"WITH ids (kind, value) AS (VALUES {values}),"
            " owners (person) AS (SELECT DISTINCT i.person FROM ids"
            " CROSS JOIN identifiers i ON i.kind = ids.kind AND i.value = ids.value)"
            " SELECT i.person, i.kind, i.value, i.last_seen, i.seq"
            " FROM owners o CROSS JOIN identifiers i ON i.person = o.person"
            " UNION ALL SELECT t.person, NULL, t.key, t.value, t.ts"
            " FROM owners o CROSS JOIN traits t ON t.person = o.person"
            " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL"
            " WHERE EXISTS (SELECT 1 FROM ids CROSS JOIN held h"
            " ON h.anonymous_id = ids.value WHERE ids.kind = 'anonymous_id')"
            " OR EXISTS (SELECT 1 FROM owners o CROSS JOIN identifiers i"
            " ON i.person = o.person AND i.kind = 'anonymous_id'"
            " CROSS JOIN held h ON h.anonymous_id = i.value)"
        )
    return sql


class SqliteStore:
    """State in one SQLite file (or `:memory:`); thread-safe through one lock, one connection."""

    def __init__(self, path: str, dedup_window_seconds: float = DEFAULT_DEDUP_WINDOW) -> None:
        self.path = path
        self.window = float(dedup_window_seconds)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open SQLite state {path!r}: {exc}", retriable=False) from exc

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
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                raise StateError(f"SQLite state: {exc}", retriable=locked) from exc
            except sqlite3.Error as exc:
                raise StateError(f"SQLite state: {exc}", retriable=False) from exc

    # identity ---------------------------------------------------------------------------

    def link(
        self,
        identifiers: Sequence[Identifier],
        traits: Mapping[str, Any] | None = None,
        timestamp: float = 0.0,
    ) -> LinkResult:
        """See StateStore.link; one IMMEDIATE transaction."""
        ids = check_identifiers(identifiers)
        return self._run("BEGIN IMMEDIATE", self._link, ids, traits, float(timestamp))

    def _link(
        self,
        db: sqlite3.Connection,
        ids: list[Identifier],
        traits: Mapping[str, Any] | None,
        ts: float,
    ) -> LinkResult:
        found = db.execute(_owners_sql(len(ids)), [x for pair in ids for x in pair]).fetchall()
        persons: set[int] = set()
        held = False
        for row in found:
            if row[0] is None:
                held = True  # something is held under an anonymous id of the linked person
            else:
                persons.add(row[0])
        if persons:
            owners = sorted(persons)
            survivor, losers = owners[0], owners[1:]
        else:
            survivor = db.execute(_NEW_PERSON, (ts,)).fetchone()[0]
            losers = []
        for loser in losers:
            self._fold(db, loser, survivor)
        top = db.execute(_TOUCH, (len(ids),)).fetchone()[0]
        # the survivor's state after this call, from `found` (exact unless something was folded)
        known: dict[Identifier, tuple[float, int]] = {}
        stored: dict[str, tuple[bytes, float]] = {}
        exact = not losers
        if exact:
            for owner, kind, value, first, second in found:
                if owner is None:
                    continue
                if kind is not None:
                    known[(kind, value)] = (first, second)
                else:
                    stored[value] = (first, second)
        rows = []
        for i, ident in enumerate(ids):
            seq = top - i
            rows.append((ident[0], ident[1], survivor, ts, seq))
            old = known.get(ident)
            if old is None or ts >= old[0]:
                known[ident] = (ts, seq)  # last_seen = max(old, ts)
        db.executemany(_UPSERT_IDENTIFIER, rows)
        if traits:
            changed = []
            for key, value in traits.items():
                blob = orjson.dumps(value)
                if not exact or not isinstance(key, str):
                    exact = False
                    changed.append((survivor, key, blob, ts))
                    continue
                before = stored.get(key)
                if before is None or ts > before[1] or (ts == before[1] and blob != before[0]):
                    changed.append((survivor, key, blob, ts))  # else the upsert would keep it
                    stored[key] = (blob, ts)
            if changed:
                db.executemany(_UPSERT_TRAIT, changed)
        if exact:
            person = build_person(
                str(survivor),
                [(kind, value, last, seq) for (kind, value), (last, seq) in known.items()],
                {key: orjson.loads(stored[key][0]) for key in sorted(stored)},
            )
        else:
            person = self._load(db, survivor)
        released: tuple[bytes, ...] = ()
        if held and person.named and person.identifiers.get("anonymous_id"):
            released = self._release(db, person.identifiers["anonymous_id"])
        return LinkResult(person, tuple(str(x) for x in losers), released)

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
    def _release(db: sqlite3.Connection, anonymous_ids: Sequence[str]) -> tuple[bytes, ...]:
        """Remove and return payloads held under `anonymous_ids`, oldest first."""
        rows: list[tuple[float, int, bytes]] = []
        for part in _chunks(anonymous_ids):
            marks = ",".join("?" * len(part))
            rows += db.execute(
                f"DELETE FROM held WHERE anonymous_id IN ({marks}) RETURNING held_at, seq, payload",
                tuple(part),
            ).fetchall()
        if rows:
            rows.sort()
            _bump_held(db, -len(rows), -sum(len(r[2]) for r in rows))
        return tuple(bytes(r[2]) for r in rows)

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
        db.execute(
            "INSERT INTO held (anonymous_id, payload, held_at) VALUES (?,?,?)",
            (anonymous_id, payload, now),
        )
        _bump_held(db, 1, len(payload))
        return None

    def expire_held(self, older_than: float, limit: int = 1000) -> list[tuple[str, bytes]]:
        """See StateStore.expire_held."""
        rows = self._run("BEGIN IMMEDIATE", _expire, float(older_than), int(limit))
        return [(r[1], bytes(r[2])) for r in rows]

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

    def prune(self, now: float) -> int:
        """See StateStore.prune; uses the index on `at`."""
        return self._run(
            "BEGIN IMMEDIATE",
            _rowcount,
            "DELETE FROM dedup WHERE at <= ?",
            (float(now) - self.window,),
        )

    # admin ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """See StateStore.stats."""
        return self._run("BEGIN", _stats)

    def close(self) -> None:
        """Close the connection (checkpoints the WAL)."""
        with self._lock:
            self._db.close()


def _bump_held(db: sqlite3.Connection, count: int, size: int) -> None:
    db.execute(
        "UPDATE counters SET value = value + CASE name WHEN 'held_count' THEN ? ELSE ? END"
        " WHERE name IN ('held_count', 'held_bytes')",
        (count, size),
    )


def _fetchone(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return db.execute(sql, params).fetchone()


def _executemany(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    db.executemany(sql, rows)


def _rowcount(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return db.execute(sql, params).rowcount


def _expire(db: sqlite3.Connection, older_than: float, limit: int) -> list[Any]:
    rows = db.execute(
        "SELECT seq, anonymous_id, payload FROM held WHERE held_at < ?"
        " ORDER BY held_at, seq LIMIT ?",
        (older_than, limit),
    ).fetchall()
    if rows:
        db.executemany("DELETE FROM held WHERE seq = ?", [(r[0],) for r in rows])
        _bump_held(db, -len(rows), -sum(len(r[2]) for r in rows))
    return rows


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
