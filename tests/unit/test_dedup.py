"""Delivered message ids are written to the store in large flushes, never forgotten meanwhile."""

from pathlib import Path

import pytest

from stream.dedup import Deduplicator
from stream.state import StateError, open_store
from stream.state.sqlite import SqliteStore


def test_delivered_ids_are_duplicates_before_and_after_their_flush(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    dedup = Deduplicator(store, flush_ids=3, flush_seconds=3600)
    assert dedup.fresh(["a", "b"]) == [True, True]
    dedup.delivered(["a", "b"])
    assert store.seen(["a", "b"]) == set()  # not written yet ...
    assert dedup.fresh(["a", "b", "c"]) == [False, False, True]  # ... still duplicates here
    dedup.delivered(["c"])  # the third id reaches flush_ids
    assert store.seen(["a", "b", "c"]) == {"a", "b", "c"}
    other = Deduplicator(store)  # another consumer (or this one after a restart)
    assert other.fresh(["a", "d"]) == [False, True]


def test_flush_due_waits_for_the_oldest_id_and_shutdown_flushes_all(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    dedup = Deduplicator(store, flush_ids=1000, flush_seconds=3600)
    dedup.fresh(["a"])
    dedup.delivered(["a"])
    dedup.flush_due()
    assert store.seen(["a"]) == set()
    dedup.flush()
    assert store.seen(["a"]) == {"a"}
    eager = Deduplicator(store, flush_ids=1000, flush_seconds=0)
    eager.fresh(["b"])
    eager.delivered(["b"])
    eager.flush_due()
    assert store.seen(["b"]) == {"b"}


def test_a_failed_flush_keeps_the_ids_for_the_next(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    assert isinstance(store, SqliteStore)
    dedup = Deduplicator(store, flush_ids=1000)
    dedup.fresh(["a", "b"])
    dedup.delivered(["a", "b"])
    store._db.execute("BEGIN IMMEDIATE")  # a write in progress elsewhere: the flush fails
    with pytest.raises(StateError):
        dedup.flush()
    store._db.execute("ROLLBACK")
    assert dedup.fresh(["a"]) == [False]  # still known here
    dedup.flush()
    assert store.seen(["a", "b"]) == {"a", "b"}
