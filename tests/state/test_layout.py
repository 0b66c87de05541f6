"""State written by an older release is brought up to date on start, in place; state of a newer
release than this one is refused with one clear line (SQLite `PRAGMA user_version`, Redis
`<prefix>layout`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis

from stream.core.errors import StateError
from stream.state import open_store
from stream.state.redis import LAYOUT_VERSION as REDIS_LAYOUT
from stream.state.sqlite import LAYOUT_VERSION as SQLITE_LAYOUT

# The SQLite layout release 0.1.0 wrote (no version; held rows without a lease).
V1_SCHEMA = """
CREATE TABLE persons (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
                      merged_into INTEGER);
CREATE TABLE identifiers (kind TEXT NOT NULL, value TEXT NOT NULL, person INTEGER NOT NULL,
                          last_seen REAL NOT NULL, seq INTEGER NOT NULL,
                          PRIMARY KEY (kind, value)) WITHOUT ROWID;
CREATE INDEX identifiers_person ON identifiers (person);
CREATE TABLE traits (person INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                     ts REAL NOT NULL, PRIMARY KEY (person, key)) WITHOUT ROWID;
CREATE TABLE held (seq INTEGER PRIMARY KEY AUTOINCREMENT, anonymous_id TEXT NOT NULL,
                   payload BLOB NOT NULL, held_at REAL NOT NULL);
CREATE INDEX held_anon ON held (anonymous_id, seq);
CREATE INDEX held_time ON held (held_at, seq);
CREATE TABLE dedup (message_id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX dedup_at ON dedup (at);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters VALUES ('touch', 2), ('held_count', 1), ('held_bytes', 4);
INSERT INTO persons (id, created) VALUES (1, 1.0);
INSERT INTO identifiers VALUES ('email', 'ann@x.io', 1, 1.0, 1);
INSERT INTO identifiers VALUES ('anonymous_id', 'device', 1, 1.0, 2);
INSERT INTO traits VALUES (1, 'plan', '"pro"', 1.0);
INSERT INTO persons (id, created) VALUES (2, 2.0);
INSERT INTO identifiers VALUES ('anonymous_id', 'visitor', 2, 2.0, 3);
INSERT INTO held (anonymous_id, payload, held_at) VALUES ('visitor', X'68656C64', 2.0);
INSERT INTO dedup VALUES ('m-1', 4102444800.0);
"""


def test_a_sqlite_file_of_the_previous_layout_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
    store = open_store(f"sqlite:///{path}")
    try:
        ann = store.lookup(("email", "ann@x.io"))
        assert ann is not None and ann.traits == {"plan": "pro"}
        assert store.seen(["m-1"]) == {"m-1"}
        assert store.held_count() == 1
        [released] = store.link([("email", "bea@x.io"), ("anonymous_id", "visitor")]).released
        assert released.payload == b"held"
        assert store.held_count() == 1, "released, leased until settled (v2)"
        store.settle_held([released.id])
        assert store.held_count() == 0
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SQLITE_LAYOUT
    open_store(f"sqlite:///{path}").close()  # a second start finds nothing to migrate


def test_a_sqlite_file_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE held (seq INTEGER)")
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StateError, match="layout v99, newer than this release"):
        open_store(f"sqlite:///{path}")


def test_redis_data_of_the_previous_layout_is_migrated_in_place(clean_redis_url: str) -> None:
    with redis.Redis.from_url(clean_redis_url) as r:  # what release 0.1.0 wrote
        r.hset("ks:ids", mapping={"email:ann@x.io": "1", "anonymous_id:visitor": "2"})
        r.hset("ks:p:1", mapping={"i:email:ann@x.io": "1.0 1", "t:plan": "1.0",
                                  "v:plan": '"pro"', "n": "1"})  # fmt: skip
        r.hset("ks:p:2", mapping={"i:anonymous_id:visitor": "2.0 2"})
        r.set("ks:seq:person", 2)
        r.set("ks:seq:touch", 2)
        r.set("ks:seq:held", 1)
        r.rpush("ks:h:visitor", "0000000000000001")
        r.zadd("ks:hz", {"0000000000000001": 2.0})
        r.hset("ks:hp", "0000000000000001", b"held")
        r.hset("ks:ha", "0000000000000001", "visitor")
        r.set("ks:hbytes", 4)
    store = open_store(clean_redis_url)
    try:
        ann = store.lookup(("email", "ann@x.io"))
        assert ann is not None and ann.traits == {"plan": "pro"}
        [released] = store.link([("email", "bea@x.io"), ("anonymous_id", "visitor")]).released
        assert released.payload == b"held"
        store.settle_held([released.id])
        assert store.held_count() == 0 and store.held_bytes() == 0
    finally:
        store.close()
    with redis.Redis.from_url(clean_redis_url) as r:
        assert r.get("ks:layout") == str(REDIS_LAYOUT).encode()


def test_redis_data_of_a_newer_release_is_refused(clean_redis_url: str) -> None:
    with redis.Redis.from_url(clean_redis_url) as r:
        r.set("ks:layout", 99)
    with pytest.raises(StateError, match="layout v99, newer than this release"):
        open_store(clean_redis_url)
