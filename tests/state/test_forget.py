"""Erasure in the state store (`forget`, tombstones, erasure entries), on both backends."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable

from stream.state import StateStore
from stream.state.base import Tombstone, tombstone_hash

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


def test_tombstones_hold_a_hash_the_deletion_and_nothing_personal(
    store: StateStore, store_url: str
) -> None:
    store.link(ADA, None, 1.0)  # type: ignore[arg-type]
    assert store.tombstones() == ([], 0)
    first = store.forget([("email", "ada@example.com")], 100.0, "del-1", ("calls", 2, 41))
    found, mark = store.tombstones()
    expected = {tombstone_hash(ident) for ident in ADA}  # type: ignore[arg-type]
    assert {h for h, _ in found} == expected
    assert {tomb for _, tomb in found} == {Tombstone(100.0, first.seq, "del-1", ("calls", 2, 41))}
    assert mark == first.seq
    assert hashlib.sha256(b"email:ada@example.com").hexdigest() in expected
    assert store.tombstones(mark) == ([], mark)  # nothing new since
    # an older deletion naming one more identifier (so not one applied already)
    store.forget([("email", "ada@example.com"), ("external_id", "u-2")], 50.0, "del-older")
    newer_one = store.forget([("phone", "+14155552671")], 200.0, "del-newer")
    newer, mark2 = store.tombstones(mark)
    rows = dict(newer)
    assert rows[tombstone_hash(("email", "ada@example.com"))].deleted_at == 100.0  # the latest
    assert rows[tombstone_hash(("email", "ada@example.com"))].erasure == "del-1"  # its erasure
    assert rows[tombstone_hash(("phone", "+14155552671"))] == Tombstone(
        200.0, newer_one.seq, "del-newer"
    )
    assert rows[tombstone_hash(("external_id", "u-2"))].deleted_at == 50.0
    assert mark2 == newer_one.seq > mark
    assert store.tombstone_rows([tombstone_hash(("phone", "+14155552671")), "00"]) == {
        tombstone_hash(("phone", "+14155552671")): rows[tombstone_hash(("phone", "+14155552671"))]
    }
    if store_url.startswith("sqlite"):  # a hash, a time, a mark, an erasure id, a position
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            stored = db.execute("SELECT * FROM tombstones").fetchall()
        assert stored and all("ada" not in str(row) and "1415" not in str(row) for row in stored)


def test_tombstones_are_read_in_whole_erasures_and_paged(store: StateStore) -> None:
    for n in range(5):
        store.forget([("email", f"p{n}@x.io"), ("phone", f"+1415555{n:04d}")], 1.0, f"del-{n}")
    seen: list[tuple[str, Tombstone]] = []
    mark = 0
    while True:
        page, mark = store.tombstones(mark, limit=3)
        if not page:
            break
        assert len({tomb.seq for _, tomb in page}) * 2 == len(page)  # never half an erasure
        seen += page
    assert len(seen) == 10 and mark == max(tomb.seq for _, tomb in seen)
    hashes: set[str] = set()
    cursor = ""
    while True:
        found, cursor = store.tombstone_hashes(cursor, count=4)
        hashes.update(found)
        if not cursor:
            break
    assert hashes == {h for h, _ in seen}


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
    [(digest, tomb)] = store.tombstones()[0]
    assert digest == tombstone_hash(("email", "ghost@example.com")) and tomb.deleted_at == 5.0


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
