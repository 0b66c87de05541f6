"""Case 13 of the lifecycle issue: tombstones stay in the store; a replica keeps a Bloom filter of
them (a couple of bytes each) and a bounded cache, and one rule orders a call against a deletion
(case 11: Kafka's order on the delete's own partition, else the call's time)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stream.identity import tombstones as module
from stream.identity.tombstones import BloomFilter, Tombstones, older
from stream.state import open_store
from stream.state.base import Tombstone


def digest(n: int, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}{n}".encode()).hexdigest()


def test_the_filter_never_forgets_grows_by_layers_and_rarely_lies() -> None:
    bloom = BloomFilter(capacity=1000)
    for n in range(20_000):
        bloom.add(digest(n))
    assert all(digest(n) in bloom for n in range(20_000))  # no false negative, ever
    liars = sum(digest(n, "other") in bloom for n in range(20_000))
    assert liars / 20_000 < 0.05
    assert bloom.bytes < 20_000 * 4  # a few bytes a tombstone (it was ~175 in every replica)


class CountingStore:
    """A real store that counts the row look-ups the cache lets through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked: list[list[str]] = []

    def tombstone_rows(self, hashes: Sequence[str]) -> dict[str, Tombstone]:
        self.asked.append(list(hashes))
        return dict(self.inner.tombstone_rows(hashes))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_replica_loads_every_tombstone_in_pages_and_asks_the_store_only_for_maybes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "PAGE", 7)  # several pages of hashes and of new rows
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        for n in range(20):
            store.forget([("email", f"gone{n}@x.io")], 10.0 + n, f"d-{n}", ("calls", 0, n))
        counting = CountingStore(store)
        view = Tombstones(counting, cache_size=5)  # type: ignore[arg-type]
        view.load()
        assert view.count == 20 and view.mark == store.tombstone_mark()
        strangers = [digest(n, "never") for n in range(200)]
        assert view.rows(strangers) == {}
        assert sum(len(a) for a in counting.asked) < 20  # the filter ruled (nearly) all out
        wanted = hashlib.sha256(b"email:gone3@x.io").hexdigest()
        counting.asked.clear()
        assert view.rows([wanted])[wanted].erasure == "d-3"
        assert view.rows([wanted])[wanted].position == ("calls", 0, 3)
        assert counting.asked == [[wanted]]  # the second answer came from the cache
        for n in range(10):  # more than the cache holds
            view.rows([hashlib.sha256(f"email:gone{n}@x.io".encode()).hexdigest()])
        assert len(view._rows) <= 5
        store.forget([("email", "late@x.io")], 99.0, "d-late")  # another replica's deletion
        new = view.refresh()
        assert [tomb.erasure for _, tomb in new] == ["d-late"] and view.count == 21
    finally:
        store.close()


@pytest.mark.parametrize(
    ("position", "historical", "called_at", "expected"),
    [
        (("calls", 0, 41), False, 500.0, True),  # before it on its partition: older
        (("calls", 0, 43), False, 10.0, False),  # after it there: newer, whatever its clock
        (("calls", 0, 43), True, 10.0, True),  # a replay lands after it: its time decides
        (("calls", 1, 1), False, 99.0, True),  # elsewhere: the call's time against the deletion's
        (("calls", 1, 1), False, 100.0, False),
        (None, False, 101.0, False),  # a held call without a position: its time
    ],
)
def test_case11_kafka_order_on_the_deletes_own_partition_time_elsewhere(
    position: Any, historical: bool, called_at: float, expected: bool
) -> None:
    tomb = Tombstone(100.0, 1, "d-1", ("calls", 0, 42))
    assert older(tomb, called_at, position, historical) is expected


def test_case11_a_future_stamped_delete_counts_from_the_moment_it_was_read(
    tmp_path: Path,
) -> None:
    from stream.core.calls import Record, normalize
    from stream.identity.erasure import Erasure
    from stream.identity.resolver import IdentityResolver

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        now = [1_800_000_000.0]
        erasure = Erasure(store, IdentityResolver(store), clock=lambda: now[0])
        ahead = normalize("delete", {"messageId": "d", "timestamp": "2027-01-15T08:05:00Z",
                                     "userId": "u-ada"})  # five minutes past `now`
        erasure.forget(ahead, [("external_id", "u-ada")], Record("calls", 0, 7, generation=1))
        [(_h, tomb)] = store.tombstones()[0]
        assert tomb.deleted_at == now[0]  # capped at its reading, not its own clock
    finally:
        store.close()




def test_an_identifier_known_clear_is_looked_at_again_once_a_tombstone_comes(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        store.forget([("email", "first@x.io")], 1.0, "d-0")  # the filter is not empty
        view = Tombstones(store)
        view.load()
        ann = ("email", "ann@x.io")
        assert view.of([ann]) == {}  # clear, and remembered as clear
        store.forget([ann], 5.0, "d-ann")  # another replica deletes her
        assert view.of([ann]) == {}  # not read yet: at most a heartbeat late
        view.refresh()
        [tomb] = view.of([ann]).values()
        assert tomb.erasure == "d-ann"
    finally:
        store.close()
