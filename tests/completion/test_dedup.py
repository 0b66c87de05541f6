"""Delivered message ids are written to the store in large flushes, never forgotten meanwhile;
a copy of an id in flight is told which record owns it."""

from pathlib import Path

import pytest

from stream.completion.dedup import Deduplicator
from stream.core.calls import Record
from stream.state import StateError, open_store
from stream.state.sqlite import SqliteStore


def records(*ids: str) -> list[Record]:
    return [Record("t", 0, n, message_id=mid) for n, mid in enumerate(ids)]


def test_delivered_ids_are_duplicates_before_and_after_their_flush(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    dedup = Deduplicator(store, flush_ids=3, flush_seconds=3600)
    assert dedup.fresh(records("a", "b")) == [True, True]
    dedup.delivered(["a", "b"])
    assert store.seen(["a", "b"]) == set()  # not written yet ...
    assert dedup.fresh(records("a", "b", "c")) == [False, False, True]  # ... duplicates here
    dedup.delivered(["c"])  # the third id reaches flush_ids
    assert dedup.flush_due()
    dedup.flush()
    assert store.seen(["a", "b", "c"]) == {"a", "b", "c"}
    other = Deduplicator(store)  # another consumer (or this one after a restart)
    assert other.fresh(records("a", "d")) == [False, True]


def test_a_copy_of_an_id_in_flight_is_told_its_owner(tmp_path: Path) -> None:
    dedup = Deduplicator(open_store(f"sqlite:///{tmp_path}/state.db"))
    first = records("a")
    assert dedup.fresh(first) == [True]
    [answer] = dedup.fresh(records("a"))
    assert answer is first[0]
    dedup.abandoned(["a"])  # dead-lettered: a later copy may try again
    assert dedup.fresh(records("a")) == [True]


def test_flush_due_waits_for_the_oldest_id_and_shutdown_flushes_all(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    dedup = Deduplicator(store, flush_ids=1000, flush_seconds=3600)
    dedup.fresh(records("a"))
    dedup.delivered(["a"])
    assert not dedup.flush_due()
    dedup.flush()
    assert store.seen(["a"]) == {"a"}
    eager = Deduplicator(store, flush_ids=1000, flush_seconds=0)
    eager.fresh(records("b"))
    eager.delivered(["b"])
    assert eager.flush_due()


def test_a_failed_flush_keeps_the_ids_for_the_next(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    assert isinstance(store, SqliteStore)
    dedup = Deduplicator(store, flush_ids=1000)
    dedup.fresh(records("a", "b"))
    dedup.delivered(["a", "b"])
    store._db.execute("BEGIN IMMEDIATE")  # a write in progress elsewhere: the flush fails
    with pytest.raises(StateError):
        dedup.flush()
    store._db.execute("ROLLBACK")
    assert dedup.fresh(records("a")) == [False]  # still known here
    dedup.flush()
    assert store.seen(["a", "b"]) == {"a", "b"}


def test_an_owner_of_an_ended_generation_gives_its_id_to_the_copy(tmp_path: Path) -> None:
    """Its partition was revoked and came back: the owner's items are cancelled when taken,
    so the copy read in the new generation owns the id (a copy in the same one still waits)."""

    class Gen:
        ended = False

    dedup = Deduplicator(open_store(f"sqlite:///{tmp_path}/state.db"))
    [first] = records("a")
    first.generation = old = Gen()
    assert dedup.fresh([first]) == [True]
    assert dedup.fresh(records("a")) == [first]
    old.ended = True
    [copy] = records("a")
    assert dedup.fresh([copy]) == [True]
    assert dedup.fresh(records("a")) == [copy]
