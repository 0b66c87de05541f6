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


# What the previous release (layout v1) added: tombstones and erasure entries without the
# erasure, position and state that v2 keeps.
V1_ERASURE_TABLES = """
ALTER TABLE held ADD COLUMN lease_until REAL;
CREATE TABLE tombstones (hash TEXT PRIMARY KEY, deleted_at REAL NOT NULL,
                         seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE erasures (id TEXT PRIMARY KEY, payload BLOB NOT NULL,
                       created REAL NOT NULL) WITHOUT ROWID;
INSERT INTO counters VALUES ('tombstone', 1);
INSERT INTO tombstones VALUES
  ('1f0b3b5a2b54b3bdc5ef3e9ea3fef4cdac7d5c1e67ea6eb12ee3c0d1a3c8f8a1', 30.0, 1);
INSERT INTO erasures VALUES
  ('del-old', '{"identifiers": [["email", "gone@x.io"]], "persons": 1}', 30.0);
PRAGMA user_version = 1;
"""


def test_a_sqlite_file_of_the_last_layout_keeps_its_tombstones_and_pending_erasures(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA + V1_ERASURE_TABLES)
    store = open_store(f"sqlite:///{path}")
    try:
        [(_digest, tomb)] = store.tombstones()[0]
        assert (tomb.deleted_at, tomb.seq, tomb.erasure, tomb.position) == (30.0, 1, "", None)
        assert store.open_erasures() == {"del-old"}  # still being deleted: comebacks wait
        again = store.forget([("email", "gone@x.io")], 30.0, "del-old")
        assert again.again and again.identifiers == (("email", "gone@x.io"),)
        newer = store.forget([("email", "ann@x.io")], 40.0, "del-new", ("t", 0, 9))
        assert newer.seq == 2 and store.tombstones(1)[0][0][1].position == ("t", 0, 9)
    finally:
        store.close()


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


def test_redis_data_of_the_last_layout_keeps_its_tombstones_and_pending_erasures(
    clean_redis_url: str,
) -> None:
    digest = "1f0b3b5a2b54b3bdc5ef3e9ea3fef4cdac7d5c1e67ea6eb12ee3c0d1a3c8f8a1"
    with redis.Redis.from_url(clean_redis_url) as r:  # what layout v2 wrote
        r.set("ks:layout", 2)
        r.hset("ks:tomb", digest, "30.0")
        r.zadd("ks:tombz", {digest: 1})
        r.set("ks:seq:tomb", 1)
        r.hset("ks:er", "del-old", '{"identifiers": [["email", "gone@x.io"]], "persons": 1}')
    store = open_store(clean_redis_url)
    try:
        [(_found, tomb)] = store.tombstones()[0]
        assert (tomb.deleted_at, tomb.seq, tomb.erasure, tomb.position) == (30.0, 1, "", None)
        assert store.open_erasures() == {"del-old"}
        store.settle_erasure("del-old")
        assert store.open_erasures() == set()
    finally:
        store.close()
    with redis.Redis.from_url(clean_redis_url) as r:
        assert r.get("ks:layout") == str(REDIS_LAYOUT).encode()


def test_redis_data_of_a_newer_release_is_refused(clean_redis_url: str) -> None:
    with redis.Redis.from_url(clean_redis_url) as r:
        r.set("ks:layout", 99)
    with pytest.raises(StateError, match="layout v99, newer than this release"):
        open_store(clean_redis_url)
