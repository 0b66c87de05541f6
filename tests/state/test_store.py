"""Contract of the state store, run against both backends (SQLite file, real Redis)."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream.core.errors import ConfigError
from stream.state import Identifier, StateError, StateStore, open_store
from stream.state.rules import Limits
from tests.support import poll_until

WINDOW = 0.5  # dedup window for these tests, seconds


@pytest.fixture
def dedup_window() -> float:
    """A short window, so that expiry can be watched."""
    return WINDOW


# identity ---------------------------------------------------------------------------------


def test_identifiers_seen_together_are_one_person(store: StateStore) -> None:
    result = store.link([("email", "a@x.io"), ("phone", "+15550001"), ("anonymous_id", "an1")])
    person = result.person
    assert person.named
    assert person.identifiers == {
        "email": ("a@x.io",),
        "phone": ("+15550001",),
        "anonymous_id": ("an1",),
    }
    assert result.merged_ids == ()
    for identifier in [("email", "a@x.io"), ("phone", "+15550001"), ("anonymous_id", "an1")]:
        found = store.lookup(identifier)  # type: ignore[arg-type]
        assert found is not None and found.id == person.id
    assert store.lookup(("email", "nobody@x.io")) is None
    assert store.stats()["persons"] == 1
    assert store.stats()["identifiers"] == 3


def test_link_requires_an_identifier(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.link([])


def test_anonymous_only_person_is_not_named(store: StateStore) -> None:
    person = store.link([("anonymous_id", "an1")]).person
    assert not person.named


def test_linking_two_persons_folds_them_into_the_owner_of_the_strongest(
    store: StateStore,
) -> None:
    older = store.link([("email", "a@x.io")], {"plan": "gold"}, timestamp=1.0).person
    younger = store.link([("external_id", "u-7"), ("anonymous_id", "an")], timestamp=2.0).person
    assert older.id != younger.id

    result = store.link([("email", "a@x.io"), ("external_id", "u-7")], timestamp=3.0)

    assert result.person.id == younger.id  # external_id outranks email
    assert result.merged_ids == (older.id,)
    assert result.person.identifiers["external_id"] == ("u-7",)
    assert result.person.identifiers["anonymous_id"] == ("an",)
    assert result.person.traits == {"plan": "gold"}
    for identifier in [("external_id", "u-7"), ("anonymous_id", "an"), ("email", "a@x.io")]:
        found = store.lookup(identifier)  # type: ignore[arg-type]
        assert found is not None and found.id == younger.id
    assert store.stats()["persons"] == 1
    assert store.link([("email", "a@x.io"), ("external_id", "u-7")]).merged_ids == ()


def test_two_external_ids_are_never_one_person(store: StateStore) -> None:
    ids = [store.link([("external_id", f"u{i}")]).person.id for i in range(3)]
    result = store.link([("external_id", "u2"), ("external_id", "u0"), ("external_id", "u1")])
    assert result.person.id == ids[2]  # the first of the strongest kind anchors the call
    assert result.merged_ids == ()
    assert sorted(result.refused_persons) == sorted(ids[:2])
    assert set(result.refused) == {("external_id", "u0"), ("external_id", "u1")}
    assert store.stats()["persons"] == 3


def test_with_higher_limits_persons_fold_into_the_anchor(store: StateStore) -> None:
    store.limits = Limits(external_id=3)  # type: ignore[attr-defined]
    ids = [store.link([("external_id", f"u{i}")]).person.id for i in range(3)]
    result = store.link([("external_id", "u2"), ("external_id", "u0"), ("external_id", "u1")])
    assert result.person.id == ids[2]
    assert sorted(result.merged_ids) == sorted(ids[:2])


def test_recency_order_per_kind(store: StateStore) -> None:
    store.limits = Limits(email=5)  # type: ignore[attr-defined]  # order, not limits, here
    store.link([("email", "old@x.io")], timestamp=10.0)
    person = store.link([("email", "old@x.io"), ("email", "new@x.io")], timestamp=20.0).person
    assert person.identifiers["email"] == ("old@x.io", "new@x.io")  # same call: listed order

    person = store.link([("email", "new@x.io")], timestamp=30.0).person
    assert person.identifiers["email"] == ("new@x.io", "old@x.io")

    person = store.link([("email", "old@x.io")], timestamp=5.0).person  # late record
    assert person.identifiers["email"] == ("new@x.io", "old@x.io")

    person = store.link([("email", "old@x.io"), ("phone", "+1555")], timestamp=30.0).person
    assert person.identifiers["email"] == ("old@x.io", "new@x.io")  # equal time: later call
    assert person.identifiers["phone"] == ("+1555",)


def test_traits_merge_per_key_and_older_never_overwrite(store: StateStore) -> None:
    email: list[Identifier] = [("email", "a@x.io")]
    store.link(email, {"plan": "free", "city": "Oslo"}, timestamp=10.0)
    person = store.link(email, {"plan": "gold"}, timestamp=20.0).person
    assert person.traits == {"plan": "gold", "city": "Oslo"}

    person = store.link(email, {"plan": "silver", "age": 40}, timestamp=15.0).person
    assert person.traits == {"plan": "gold", "city": "Oslo", "age": 40}

    person = store.link(email, {"plan": "platinum", "tags": [1, {"a": None}]}, 20.0).person
    assert person.traits["plan"] == "platinum"  # equal timestamp replaces
    assert person.traits["tags"] == [1, {"a": None}]
    found = store.lookup(("email", "a@x.io"))
    assert found is not None and found.traits == person.traits


def test_fold_keeps_the_newer_trait_of_either_person(store: StateStore) -> None:
    store.link([("email", "a@x.io")], {"plan": "old", "city": "Oslo"}, timestamp=10.0)
    store.link([("phone", "+1555")], {"plan": "new", "city": "Rome"}, timestamp=20.0)
    store.link([("email", "a@x.io")], {"city": "Bergen"}, timestamp=30.0)
    person = store.link([("phone", "+1555"), ("email", "a@x.io")], timestamp=5.0).person
    assert person.traits == {"plan": "new", "city": "Bergen"}


# held payloads ----------------------------------------------------------------------------


def test_hold_keeps_payloads_of_unknown_and_anonymous_ids(store: StateStore) -> None:
    assert store.hold("never-seen", b"p1", now=1.0) is None
    store.link([("anonymous_id", "anon")])
    assert store.hold("anon", b"p22", now=2.0) is None
    assert store.held_count() == 2
    assert store.held_bytes() == 5
    assert store.stats()["held"] == 2


def payloads(entries: Any) -> tuple[bytes, ...]:
    return tuple(e.payload for e in entries)


def test_hold_returns_the_person_once_named(store: StateStore) -> None:
    store.link([("anonymous_id", "anon")])
    assert store.hold("anon", b"p1", now=1.0) is None
    result = store.link([("email", "a@x.io"), ("anonymous_id", "anon")])
    assert payloads(result.released) == (b"p1",)
    assert [e.anonymous_id for e in result.released] == ["anon"]

    person = store.hold("anon", b"p2", now=2.0)
    assert person is not None and person.id == result.person.id and person.named
    assert store.held_count() == 1, "released, but stored until it is settled"
    store.settle_held([e.id for e in result.released])
    assert store.held_count() == 0
    assert store.held_bytes() == 0


def test_naming_releases_held_payloads_oldest_first_exactly_once(store: StateStore) -> None:
    store.hold("a1", b"third", now=3.0)
    store.hold("a2", b"first", now=1.0)
    store.hold("a1", b"second", now=2.0)
    store.hold("other", b"stays", now=1.5)
    assert store.link([("anonymous_id", "a1"), ("anonymous_id", "a2")]).released == ()

    result = store.link([("external_id", "u1"), ("anonymous_id", "a1")])
    assert payloads(result.released) == (b"first", b"second", b"third")
    assert store.link([("external_id", "u1"), ("anonymous_id", "a2")]).released == ()
    store.settle_held([e.id for e in result.released])
    assert store.held_count() == 1
    assert store.held_bytes() == len(b"stays")


def test_a_release_stays_leased_until_settled_and_is_reclaimed_when_its_lease_runs_out(
    store: StateStore,
) -> None:
    """A crash after the release must not lose the held call: it comes back once its lease
    (longer than any delivery) has run out, and only then."""
    store.hold("anon", b"held", now=1.0)
    [entry] = store.link([("email", "a@x.io"), ("anonymous_id", "anon")], now=100.0).released
    assert store.link([("email", "a@x.io"), ("anonymous_id", "anon")], now=101.0).released == ()
    assert store.reclaim_held(now=100.0 + store.lease_seconds - 1) == []
    [again] = store.reclaim_held(now=100.0 + store.lease_seconds)
    assert (again.id, again.payload, again.anonymous_id) == (entry.id, b"held", "anon")
    assert store.reclaim_held(now=100.0 + store.lease_seconds + 1) == [], "leased again"
    store.settle_held([entry.id])
    assert store.reclaim_held(now=1e12) == []
    assert store.held_count() == 0 and store.held_bytes() == 0
    store.settle_held([entry.id])  # settling twice is harmless
    assert store.held_bytes() == 0


def test_folding_an_anonymous_person_into_a_named_one_releases(store: StateStore) -> None:
    store.link([("email", "a@x.io"), ("anonymous_id", "known")])
    store.link([("anonymous_id", "device"), ("anonymous_id", "device-2")])
    store.hold("device-2", b"x", now=1.0)
    result = store.link([("anonymous_id", "known"), ("anonymous_id", "device")])
    assert payloads(result.released) == (b"x",)


def test_expire_held_drops_or_leases_only_old_payloads_oldest_first(store: StateStore) -> None:
    store.hold("a", b"a1", now=1.0)
    store.hold("b", b"b2", now=2.0)
    store.hold("a", b"a3", now=3.0)
    store.hold("c", b"c4", now=1.5)
    [dropped] = store.expire_held(older_than=2.5, limit=1)
    assert (dropped.anonymous_id, dropped.payload) == ("a", b"a1")
    [sent] = store.expire_held(older_than=2.5, limit=1, lease_until=50.0)
    assert (sent.anonymous_id, sent.payload) == ("c", b"c4")
    assert payloads(store.expire_held(older_than=2.5)) == (b"b2",)
    assert store.expire_held(older_than=2.5) == []
    assert store.held_count() == 2, "the leased one stays until settled"
    assert store.held_bytes() == 4
    assert payloads(store.reclaim_held(now=50.0)) == (b"c4",)
    assert payloads(store.link([("email", "a@x.io"), ("anonymous_id", "a")]).released) == (b"a3",)


# dedup ------------------------------------------------------------------------------------


def test_seen_within_the_window_and_prune(store: StateStore) -> None:
    now = time.time()
    assert store.seen([]) == set()
    store.mark_delivered(["m1", "m2"], now=now)
    store.mark_delivered(["stale"], now=now - WINDOW - 5)
    assert store.seen(["m1", "m2", "m3", "stale"]) == {"m1", "m2"}

    removed = store.prune(now)
    assert removed in (0, 1)  # Redis expires keys itself, SQLite deletes the stale row
    assert store.stats()["dedup_keys"] == 2

    poll_until(lambda: not store.seen(["m1"]), 5, "m1 to leave the window", 0.05)
    assert store.seen(["m1", "m2"]) == set()
    store.prune(time.time())
    # Redis reclaims expired keys on its own time
    poll_until(lambda: store.stats()["dedup_keys"] == 0, 10, "expired keys reclaimed", 0.05)


def test_sqlite_prune_counts_removed_keys(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", dedup_window_seconds=100)
    try:
        store.mark_delivered(["a", "b"], now=1000.0)
        store.mark_delivered(["c"], now=1050.0)
        assert store.prune(1101.0) == 2
        assert store.stats()["dedup_keys"] == 1
    finally:
        store.close()


# durability and configuration -------------------------------------------------------------


def test_data_survives_close_and_reopen(opener: Callable[[], StateStore]) -> None:
    first = opener()
    person = first.link([("email", "a@x.io"), ("anonymous_id", "n")], {"k": 1}, 1.0).person
    first.hold("anon", b"held", now=1.0)
    first.mark_delivered(["m1"], now=time.time())
    first.close()

    second = opener()
    assert second.lookup(("anonymous_id", "n")) == person
    assert second.held_count() == 1
    assert second.seen(["m1"]) == {"m1"}
    later = second.link([("phone", "+1555")]).person
    assert int(later.id) > int(person.id)


def test_open_store_rejects_unknown_schemes() -> None:
    with pytest.raises(ConfigError, match="STATE_URL"):
        open_store("postgres://localhost/db")
    with pytest.raises(ConfigError, match="STATE_URL"):
        open_store("sqlite://")


def test_open_store_memory_sqlite() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        assert store.link([("email", "a@x.io")]).person.id == "1"
    finally:
        store.close()


def test_unreachable_redis_is_a_retriable_state_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StateError) as info:
        open_store(f"redis://127.0.0.1:{port}/0")
    assert info.value.retriable


# concurrency (Redis: several consumer processes) ------------------------------------------

PROCESSES = 6
CHAIN: list[Identifier] = [
    ("email", f"u{k}@x.io")
    if k % 3 == 0
    else ("external_id", f"x{k}")
    if k % 3 == 1
    else ("anonymous_id", f"an{k}")
    for k in range(60)
]


CHAIN_LIMITS = Limits(external_id=100, email=100)  # one person may hold the whole chain


def _link_chain(url: str, seed: int, start: Any, out: Any) -> None:
    """Worker: link every neighbouring pair of CHAIN, in a shuffled order, once started."""
    store = open_store(url, limits=CHAIN_LIMITS)
    pairs = [[CHAIN[k], CHAIN[k + 1]] for k in range(len(CHAIN) - 1)]
    random.Random(seed).shuffle(pairs)
    start.wait()
    merged = 0
    for pair in pairs:
        merged += len(store.link(pair, {"by": seed}, timestamp=float(seed)).merged_ids)
    store.close()
    out.put(merged)


def _hold_all(url: str, count: int, start: Any, out: Any) -> None:
    """Worker: hold one payload under each anonymous id; report the ids that were named."""
    store = open_store(url)
    start.wait()
    named = [j for j in range(count) if store.hold(f"race{j}", b"p%d" % j, now=1.0) is not None]
    store.close()
    out.put(("hold", named))


def _link_all(url: str, count: int, start: Any, out: Any) -> None:
    """Worker: name each anonymous id, last first; report the payloads released."""
    store = open_store(url)
    start.wait()
    released: list[bytes] = []
    for j in reversed(range(count)):  # meets the holder mid-way: both outcomes happen
        ids: list[Identifier] = [("email", f"p{j % 4}@x.io"), ("anonymous_id", f"race{j}")]
        released += [e.payload for e in store.link(ids).released]
    store.close()
    out.put(("link", released))


def _run(jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> list[Any]:
    """Run each job in a spawned process; they start together once all are up; collect results."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for target, args in jobs]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    out.close()
    out.join_thread()
    return results


def test_concurrent_processes_linking_overlapping_chains_end_in_one_person(
    clean_redis_url: str,
) -> None:
    results = _run([(_link_chain, (clean_redis_url, seed)) for seed in range(PROCESSES)])

    store = open_store(clean_redis_url)
    try:
        owners = set()
        for identifier in CHAIN:
            person = store.lookup(identifier)  # type: ignore[arg-type]
            assert person is not None
            owners.add(person.id)
        assert len(owners) == 1  # one person survives
        stats = store.stats()
        assert stats["persons"] == 1
        assert stats["identifiers"] == len(CHAIN)
        created = int(store.link([("email", "fresh@x.io")]).person.id) - 1
        assert sum(results) == created - 1  # every other person was folded exactly once
    finally:
        store.close()


def test_hold_racing_link_never_strands_a_payload(clean_redis_url: str) -> None:
    count = 400
    results = dict(
        _run([(_hold_all, (clean_redis_url, count)), (_link_all, (clean_redis_url, count))])
    )
    named, released = results["hold"], results["link"]
    assert len(released) + len(named) == count  # nothing delivered twice
    assert {int(p[1:]) for p in released} | set(named) == set(range(count))  # nothing lost
    store = open_store(clean_redis_url)
    try:
        assert store.held_count() == len(released), "released ones stay until settled"
        assert store.reclaim_held(now=0.0) == []
    finally:
        store.close()
