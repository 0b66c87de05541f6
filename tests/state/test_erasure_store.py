"""The store's part of the deletion lifecycle, on both backends: whom a delete call erases (the
person it resolves to, never the owner of a shared identifier), a link refused by a deletion
however late the caller learns of it, erasure states, replica marks, and leases that follow
their owner's liveness."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stream.state import StateStore
from stream.state.base import Tombstone, tombstone_hash
from tests.support import poll_until

ALICE = [("external_id", "u-alice"), ("email", "alice@x.io"), ("anonymous_id", "device-1")]
BOB = [("external_id", "u-bob"), ("email", "bob@x.io"), ("anonymous_id", "device-1")]


def test_case1_a_shared_browsers_anonymous_id_stays_with_the_other_person(
    store: StateStore,
) -> None:
    """Alice, then Bob, sign in on one browser: device-1 moves to Bob. Alice's delete call
    names device-1 too (the SDKs attach it): Alice goes, Bob and device-1 stay."""
    alice = store.link(ALICE, {"plan": "gold"}, 10.0).person  # type: ignore[arg-type]
    bob = store.link(BOB, {"plan": "silver"}, 20.0).person  # type: ignore[arg-type]
    assert store.lookup(("anonymous_id", "device-1")).id == bob.id  # type: ignore[union-attr]

    gone = store.forget([("external_id", "u-alice"), ("anonymous_id", "device-1")], 30.0, "d-1")

    assert gone.persons == 1 and gone.person_ids == (alice.id,) and gone.others == 1
    assert set(gone.identifiers) == {("external_id", "u-alice"), ("email", "alice@x.io")}
    for ident in BOB:
        owner = store.lookup(ident)  # type: ignore[arg-type]
        assert owner is not None and owner.id == bob.id and owner.traits == {"plan": "silver"}
    tombstoned = {h for h, _ in store.tombstones()[0]}
    assert tombstone_hash(("anonymous_id", "device-1")) not in tombstoned
    assert tombstone_hash(("email", "bob@x.io")) not in tombstoned


def test_case1_an_email_that_moved_to_someone_else_stays_with_them(store: StateStore) -> None:
    store.link([("external_id", "u-ann"), ("email", "old@x.io")], None, 1.0)
    store.link([("external_id", "u-ann"), ("email", "new@x.io")], None, 2.0)  # changed address
    carol = store.link([("external_id", "u-carol"), ("email", "old@x.io")], None, 3.0).person
    gone = store.forget([("external_id", "u-ann"), ("email", "old@x.io")], 9.0, "d-1")
    assert set(gone.identifiers) == {("external_id", "u-ann"), ("email", "new@x.io")}
    assert gone.others == 1
    assert store.lookup(("email", "old@x.io")).id == carol.id  # type: ignore[union-attr]


def test_a_delete_naming_only_an_anonymous_id_never_erases_a_named_person(
    store: StateStore,
) -> None:
    bob = store.link(BOB, None, 1.0).person  # type: ignore[arg-type]
    store.link([("anonymous_id", "visitor")], None, 1.0)  # somebody never named
    shared = store.forget([("anonymous_id", "device-1")], 5.0, "d-shared")
    assert shared.persons == 0 and shared.identifiers == () and shared.others == 1
    assert store.lookup(("anonymous_id", "device-1")).id == bob.id  # type: ignore[union-attr]
    visitor = store.forget([("anonymous_id", "visitor")], 5.0, "d-visitor")
    assert visitor.persons == 1 and visitor.identifiers == (("anonymous_id", "visitor"),)


def test_a_guarded_link_older_than_a_deletion_changes_nothing(store: StateStore) -> None:
    store.link(ALICE, None, 1.0)  # type: ignore[arg-type]
    gone = store.forget([("email", "alice@x.io")], 50.0, "d-1", ("calls", 0, 7))
    seen: list[Mapping[str, Tombstone]] = []

    def older(tombs: Mapping[str, Tombstone]) -> bool:
        seen.append(dict(tombs))
        return any(t.deleted_at > 40.0 for t in tombs.values())

    refused = store.link([("email", "alice@x.io"), ("phone", "+14155550100")], {"a": 1}, 40.0,
                         guard=older)  # fmt: skip
    assert refused.tombstoned and not refused.person.identifiers
    assert seen == [{tombstone_hash(("email", "alice@x.io")): Tombstone(
        50.0, gone.seq, "d-1", ("calls", 0, 7))}]  # fmt: skip
    assert store.lookup(("phone", "+14155550100")) is None  # nothing linked
    back = store.link([("email", "alice@x.io")], None, 60.0, guard=lambda _: False)
    assert not back.tombstoned and back.person.identifiers == {"email": ("alice@x.io",)}


def test_a_later_delete_on_the_partition_erases_the_comeback_whatever_its_clock_says(
    store: StateStore,
) -> None:
    """Delete, comeback, then a delete stamped before the first (a clock behind), all on one
    partition: Kafka's order makes the second one newer: it erases the comeback, and its
    tombstone records it there (keeping the latest time for calls from elsewhere)."""
    ann = [("external_id", "u-ann")]
    store.link(ann, None, 1.0)  # type: ignore[arg-type]
    store.forget(ann, 50.0, "d-1", ("calls", 0, 5))  # type: ignore[arg-type]
    store.link(ann, None, 60.0)  # type: ignore[arg-type]
    second = store.forget(ann, 30.0, "d-2", ("calls", 0, 9))  # type: ignore[arg-type]
    assert not second.again and second.persons == 1
    assert store.lookup(("external_id", "u-ann")) is None
    [(_digest, tomb)] = store.tombstone_rows([tombstone_hash(("external_id", "u-ann"))]).items()
    assert (tomb.deleted_at, tomb.erasure, tomb.position) == (50.0, "d-2", ("calls", 0, 9))
    for erasure, at, offset in (("d-1", 50.0, 5), ("d-2", 30.0, 9), ("d-0", 40.0, 2)):
        again = store.forget(ann, at, erasure, ("calls", 0, offset))  # type: ignore[arg-type]
        assert again.again, erasure  # read again, or older on the partition: applied before
    elsewhere = store.forget(ann, 45.0, "d-3", ("calls", 1, 0))  # type: ignore[arg-type]
    assert elsewhere.again  # another partition: by time, before the latest


def test_erasures_are_pending_until_settled_failed_ones_are_kept_then_purged(
    store: StateStore,
) -> None:
    store.link(ALICE, None, 1.0)  # type: ignore[arg-type]
    first = store.forget([("email", "alice@x.io")], 5.0, "d-1")
    store.forget([("email", "ghost@x.io")], 5.0, "d-2")
    assert store.open_erasures() == {"d-1", "d-2"}
    store.fail_erasure("d-1")  # its deletion was dead-lettered: nobody waits for it
    assert store.open_erasures() == {"d-2"}
    replay = store.forget([("email", "alice@x.io")], 5.0, "d-1")  # the replayed delete call
    assert replay.again and set(replay.identifiers) == set(first.identifiers)
    assert replay.seq == first.seq and store.open_erasures() == {"d-1", "d-2"}
    store.settle_erasure("d-2")
    store.fail_erasure("d-1")
    assert store.purge_erasures(older_than=0.0) == 0  # written after that
    assert store.purge_erasures(older_than=4e9) == 1  # the failed one; never a pending one
    assert store.open_erasures() == set()
    gone = store.forget([("email", "alice@x.io")], 5.0, "d-1")
    assert gone.again and gone.identifiers == ()  # applied before: its tombstones say so


def test_the_low_mark_is_the_lowest_live_replicas_and_the_dead_stop_counting(
    store: StateStore,
) -> None:
    assert store.low_mark() is None and store.live_replicas() == set()
    store.publish_mark("a", 7, ttl=60.0)
    store.publish_mark("b", 3, ttl=0.3)
    assert store.low_mark() == 3 and store.live_replicas() == {"a", "b"}
    store.publish_mark("b", 9, ttl=0.3)  # b finished what it had begun before mark 9
    assert store.low_mark() == 7
    poll_until(lambda: store.live_replicas() == {"a"}, timeout=10, what="b's mark to expire")
    assert store.low_mark(grace=60.0) == 7  # b, just dead, counts while its requests may land
    store.publish_mark("c", 2, ttl=0.2)
    poll_until(lambda: "c" not in store.live_replicas(), timeout=10, what="c to die")
    assert store.low_mark(grace=60.0) == 2
    assert store.low_mark() == 7  # with no grace, c no longer counts (and is forgotten)
    assert store.low_mark(grace=60.0) == 7


def test_a_lease_follows_its_owner_a_dead_owners_calls_are_taken_over_at_once(
    opener: Callable[[], StateStore],
) -> None:
    first, second = opener(), opener()
    first.lease_owner, second.lease_owner = "first", "second"
    first.publish_mark("first", 0, ttl=0.5)
    second.publish_mark("second", 0, ttl=60.0)
    first.hold("an-1", b"held", 1.0)
    [released] = first.link([("email", "a@x.io"), ("anonymous_id", "an-1")], None, 2.0,
                            now=2.0).released  # fmt: skip
    lease_ends = 2.0 + first.lease_seconds
    assert second.reclaim_held(now=3.0) == []  # its sender is alive: not ours
    poll_until(lambda: "first" not in second.live_replicas(), timeout=10, what="first to die")
    [taken] = second.reclaim_held(now=3.0)  # long before the lease ends
    assert taken.payload == released.payload and lease_ends > 3.0
    assert second.reclaim_held(now=3.0) == []  # leased to the second now, which is alive
    assert first.reclaim_held(now=3.0) == []  # the first, restarted under its id, finds none
