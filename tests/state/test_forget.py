"""Erasure in the state store (`forget`, tombstones, erasure entries), on both backends."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable

from stream.state import StateStore
from stream.state.base import tombstone_hash

ADA = [("email", "ada@example.com"), ("phone", "+14155552671"), ("external_id", "u-1")]


def test_forget_removes_the_person_its_traits_and_held_calls(store: StateStore) -> None:
    store.link([*ADA, ("anonymous_id", "an-1")], {"plan": "gold"}, 10.0)  # type: ignore[list-item]
    store.link([("anonymous_id", "an-2"), ("email", "ada@example.com")], None, 11.0)
    assert store.hold("an-3", b"not ada's", 12.0) is None  # someone else, still anonymous
    bob = store.link([("email", "bob@example.com")], {"plan": "silver"}, 10.0).person

    forgotten = store.forget([("email", "ada@example.com")], 100.0, "del-1")

    assert forgotten.persons == 1 and not forgotten.again
    assert set(forgotten.identifiers) == {
        *ADA, ("anonymous_id", "an-1"), ("anonymous_id", "an-2")
    }  # fmt: skip
    assert forgotten.identifiers[0] == ("email", "ada@example.com")  # the one asked for first
    for ident in forgotten.identifiers:
        assert store.lookup(ident) is None, ident
    survivor = store.lookup(("email", "bob@example.com"))
    assert survivor is not None and survivor.id == bob.id and survivor.traits == {"plan": "silver"}
    assert store.held_count() == 1  # only the other anonymous person's call
    stats = store.stats()
    assert (stats["persons"], stats["identifiers"]) == (1, 1)


def test_a_person_named_again_after_forget_is_new_and_carries_nothing_old(
    store: StateStore,
) -> None:
    old = store.link(ADA, {"plan": "gold"}, 10.0).person  # type: ignore[arg-type]
    store.forget([("external_id", "u-1")], 50.0, "del-1")
    new = store.link([("email", "ada@example.com")], {"city": "Paris"}, 60.0).person
    assert new.id != old.id
    assert new.identifiers == {"email": ("ada@example.com",)}
    assert new.traits == {"city": "Paris"}


def test_held_calls_of_the_forgotten_person_go_leased_ones_too(store: StateStore) -> None:
    store.link([("external_id", "u-1"), ("anonymous_id", "an-1")], None, 1.0)
    store.link([("anonymous_id", "an-2")], None, 1.0)
    store.hold("an-2", b"waiting", 2.0)
    store.hold("an-2", b"leased next", 2.0)
    # an-2 joins u-1: its held calls are released (leased, being delivered)
    released = store.link([("external_id", "u-1"), ("anonymous_id", "an-2")], None, 3.0).released
    assert [e.payload for e in released] == [b"waiting", b"leased next"]
    store.hold("an-9", b"another person", 2.0)
    forgotten = store.forget([("external_id", "u-1")], 9.0, "del-1")
    assert forgotten.held == 2
    assert store.held_count() == 1 and store.held_bytes() == len(b"another person")
    assert store.reclaim_held(10_000.0) == []  # nothing of the person comes back


def test_tombstones_hold_a_hash_and_the_latest_deletion_time_only(
    store: StateStore, store_url: str
) -> None:
    store.link(ADA, None, 1.0)  # type: ignore[arg-type]
    assert store.tombstones() == ([], 0)
    store.forget([("email", "ada@example.com")], 100.0, "del-1")
    found, mark = store.tombstones()
    expected = {tombstone_hash(ident) for ident in ADA}  # type: ignore[arg-type]
    assert {h for h, _ in found} == expected and {at for _, at in found} == {100.0}
    assert hashlib.sha256(b"email:ada@example.com").hexdigest() in expected
    assert store.tombstones(mark) == ([], mark)  # nothing new since
    # an older deletion naming one more identifier (so not one applied already)
    store.forget([("email", "ada@example.com"), ("external_id", "u-2")], 50.0, "del-older")
    store.forget([("phone", "+14155552671")], 200.0, "del-newer")
    newer, mark2 = store.tombstones(mark)
    times = dict(newer)
    assert times[tombstone_hash(("email", "ada@example.com"))] == 100.0  # kept the latest
    assert times[tombstone_hash(("phone", "+14155552671"))] == 200.0
    assert times[tombstone_hash(("external_id", "u-2"))] == 50.0
    assert mark2 > mark
    if store_url.startswith("sqlite"):  # nothing but the hash, the time and the mark
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT * FROM tombstones").fetchall()
        assert all(len(row) == 3 and "ada" not in str(row) for row in rows)


def test_a_delete_read_again_returns_what_it_removed_and_changes_nothing(
    store: StateStore,
) -> None:
    store.link(ADA, None, 1.0)  # type: ignore[arg-type]
    first = store.forget([("email", "ada@example.com")], 100.0, "del-1")
    back = store.link([("email", "ada@example.com")], None, 150.0).person  # newer: a new person
    again = store.forget([("email", "ada@example.com")], 100.0, "del-1")
    assert again.again and set(again.identifiers) == set(first.identifiers)
    assert again.persons == first.persons == 1
    still = store.lookup(("email", "ada@example.com"))
    assert still is not None and still.id == back.id  # the new person is left alone
    store.settle_erasure("del-1")
    for erasure in ("del-1", "del-1-retried"):  # read again once done, under any id
        replay = store.forget([("email", "ada@example.com")], 100.0, erasure)
        assert replay.again and replay.identifiers == () and replay.persons == 0
    still = store.lookup(("email", "ada@example.com"))
    assert still is not None and still.id == back.id  # they came back after that deletion
    newer = store.forget([("email", "ada@example.com")], 200.0, "del-2")
    assert not newer.again and newer.persons == 1  # a newer deletion erases them
    assert store.lookup(("email", "ada@example.com")) is None


def test_forgetting_someone_never_seen_still_tombstones_what_was_asked(
    store: StateStore,
) -> None:
    forgotten = store.forget([("email", "ghost@example.com")], 5.0, "del-1")
    assert forgotten.identifiers == (("email", "ghost@example.com"),)
    assert forgotten.persons == 0 and forgotten.held == 0
    assert store.tombstones()[0] == [(tombstone_hash(("email", "ghost@example.com")), 5.0)]


def test_forget_erases_persons_folded_into_the_owner(store: StateStore) -> None:
    store.link([("email", "ada@example.com")], {"a": 1}, 1.0)
    store.link([("external_id", "u-1")], {"b": 2}, 1.0)
    merged = store.link([("email", "ada@example.com"), ("external_id", "u-1")], None, 2.0)
    assert merged.merged_ids  # two persons became one
    forgotten = store.forget([("external_id", "u-1")], 9.0, "del-1")
    assert forgotten.persons == 1
    assert store.lookup(("email", "ada@example.com")) is None
    assert store.stats()["persons"] == 0


def test_erasures_and_tombstones_survive_a_reopen(opener: Callable[[], StateStore]) -> None:
    first = opener()
    first.link(ADA, None, 1.0)  # type: ignore[arg-type]
    first.forget([("email", "ada@example.com")], 100.0, "del-1")
    first.close()
    second = opener()
    assert len(second.tombstones()[0]) == 3
    assert second.forget([("email", "ada@example.com")], 100.0, "del-1").again
