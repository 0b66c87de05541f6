"""Embedded state store: one SQLite file in WAL mode, for a single consumer process.

Every multi-row update runs in one `BEGIN IMMEDIATE` transaction, so a crash leaves either the
whole link/hold or none of it. `synchronous=NORMAL` in WAL mode can lose the last transactions
on power loss (never corrupts); the Kafka offsets are stored after delivery, so those records
are replayed and `unique_id` at Klaviyo refuses duplicates.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

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

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; rolls back on error and maps sqlite errors."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
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
        ts = float(timestamp)
        with self._tx() as db:
            where = " OR ".join(["(kind = ? AND value = ?)"] * len(ids))
            params = [x for pair in ids for x in pair]
            owners = sorted(
                {
                    r[0]
                    for r in db.execute(
                        f"SELECT DISTINCT person FROM identifiers WHERE {where}", params
                    )
                }
            )
            if owners:
                survivor, losers = owners[0], owners[1:]
            else:
                survivor = db.execute(
                    "INSERT INTO persons (created) VALUES (?) RETURNING id", (ts,)
                ).fetchone()[0]
                losers = []
            for loser in losers:
                self._fold(db, loser, survivor)
            top = db.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'touch' RETURNING value",
                (len(ids),),
            ).fetchone()[0]
            db.executemany(
                "INSERT INTO identifiers (kind, value, person, last_seen, seq) VALUES (?,?,?,?,?)"
                " ON CONFLICT (kind, value) DO UPDATE SET person = excluded.person,"
                " seq = CASE WHEN excluded.last_seen >= last_seen THEN excluded.seq ELSE seq END,"
                " last_seen = max(last_seen, excluded.last_seen)",
                [(k, v, survivor, ts, top - i) for i, (k, v) in enumerate(ids)],
            )
            if traits:
                db.executemany(
                    "INSERT INTO traits (person, key, value, ts) VALUES (?,?,?,?)"
                    " ON CONFLICT (person, key) DO UPDATE SET value = excluded.value,"
                    " ts = excluded.ts WHERE excluded.ts >= traits.ts",
                    [(survivor, k, orjson.dumps(v), ts) for k, v in traits.items()],
                )
            person = self._load(db, survivor)
            released: tuple[bytes, ...] = ()
            if person.named and person.identifiers.get("anonymous_id"):
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
        rows = db.execute(
            "SELECT kind, value, last_seen, seq FROM identifiers WHERE person = ?", (person_id,)
        ).fetchall()
        traits = {
            k: orjson.loads(v)
            for k, v in db.execute("SELECT key, value FROM traits WHERE person = ?", (person_id,))
        }
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
        with self._tx(immediate=False) as db:
            row = db.execute(
                "SELECT person FROM identifiers WHERE kind = ? AND value = ?", identifier
            ).fetchone()
            return None if row is None else self._load(db, row[0])

    # held payloads ----------------------------------------------------------------------

    def hold(self, anonymous_id: str, payload: bytes, now: float) -> Person | None:
        """See StateStore.hold; one IMMEDIATE transaction."""
        with self._tx() as db:
            row = db.execute(
                "SELECT person FROM identifiers WHERE kind = 'anonymous_id' AND value = ?",
                (anonymous_id,),
            ).fetchone()
            if row is not None:
                named = db.execute(
                    "SELECT 1 FROM identifiers WHERE person = ? AND kind != 'anonymous_id' LIMIT 1",
                    (row[0],),
                ).fetchone()
                if named:
                    return self._load(db, row[0])
            db.execute(
                "INSERT INTO held (anonymous_id, payload, held_at) VALUES (?,?,?)",
                (anonymous_id, payload, float(now)),
            )
            _bump_held(db, 1, len(payload))
            return None

    def expire_held(self, older_than: float, limit: int = 1000) -> list[tuple[str, bytes]]:
        """See StateStore.expire_held."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT seq, anonymous_id, payload FROM held WHERE held_at < ?"
                " ORDER BY held_at, seq LIMIT ?",
                (float(older_than), int(limit)),
            ).fetchall()
            if rows:
                db.executemany("DELETE FROM held WHERE seq = ?", [(r[0],) for r in rows])
                _bump_held(db, -len(rows), -sum(len(r[2]) for r in rows))
        return [(r[1], bytes(r[2])) for r in rows]

    def held_count(self) -> int:
        """See StateStore.held_count."""
        return self._counter("held_count")

    def held_bytes(self) -> int:
        """See StateStore.held_bytes."""
        return self._counter("held_bytes")

    def _counter(self, name: str) -> int:
        with self._tx(immediate=False) as db:
            return int(
                db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]
            )

    # dedup ------------------------------------------------------------------------------

    def seen(self, message_ids: Sequence[str]) -> set[str]:
        """See StateStore.seen; entries older than the window no longer count, pruned or not."""
        if not message_ids:
            return set()
        cutoff = time.time() - self.window
        out: set[str] = set()
        with self._tx(immediate=False) as db:
            for part in _chunks(list(message_ids)):
                marks = ",".join("?" * len(part))
                out.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT message_id FROM dedup WHERE message_id IN ({marks}) AND at > ?",
                        (*part, cutoff),
                    )
                )
        return out

    def mark_delivered(self, message_ids: Sequence[str], now: float) -> None:
        """See StateStore.mark_delivered; one transaction for the batch."""
        if not message_ids:
            return
        at = float(now)
        with self._tx() as db:
            db.executemany(
                "INSERT INTO dedup (message_id, at) VALUES (?, ?)"
                " ON CONFLICT (message_id) DO UPDATE SET at = max(at, excluded.at)",
                [(m, at) for m in message_ids],
            )

    def prune(self, now: float) -> int:
        """See StateStore.prune; uses the index on `at`."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM dedup WHERE at <= ?", (float(now) - self.window,))
            return cur.rowcount

    # admin ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """See StateStore.stats."""
        queries = {
            "persons": "SELECT count(*) FROM persons WHERE merged_into IS NULL",
            "identifiers": "SELECT count(*) FROM identifiers",
            "dedup_keys": "SELECT count(*) FROM dedup",
            "held": "SELECT value FROM counters WHERE name = 'held_count'",
        }
        with self._tx(immediate=False) as db:
            return {name: int(db.execute(sql).fetchone()[0]) for name, sql in queries.items()}

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
