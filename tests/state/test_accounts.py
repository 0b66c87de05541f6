"""One state store per account, on both backends: the same email in two accounts is two
people, and nothing one account writes (dedup marks, held calls, a forget and its tombstones,
erasure entries, replica marks, catalog jobs) is seen by another. The account keeping the
existing state uses today's file or Redis prefix: a deployment moving to an accounts file
keeps what it had."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from stream.accounts.config import Accounts, implicit_accounts
from stream.accounts.stores import open_stores, store_location
from stream.core.settings import Settings
from stream.state import StateStore, open_store
from stream.state.catalog import CatalogJob

EMAIL = ("email", "ada@example.com")


def accounts_of(settings: Settings, *names: str) -> Accounts:
    """The implicit account (keeping today's state) and fresh accounts `names`."""
    default = implicit_accounts(settings).accounts[0]
    fresh = tuple(replace(default, name=name, key=None, keeps_state=False) for name in names)
    return Accounts((default, *fresh), source="accounts.yaml")


@pytest.fixture
def stores(store_url: str) -> Iterator[dict[str, StateStore]]:
    settings = Settings(state_url=store_url)
    opened = open_stores(settings, accounts_of(settings, "brand-a", "brand-b"))
    yield opened
    for store in opened.values():
        store.close()


def test_the_same_email_in_two_accounts_is_two_people(stores: dict[str, StateStore]) -> None:
    a, b = stores["brand-a"], stores["brand-b"]
    ada_a = a.link([EMAIL, ("external_id", "u-1")], {"plan": "gold"}, 10.0).person
    ada_b = b.link([EMAIL], {"plan": "silver"}, 11.0).person
    found_a, found_b = a.lookup(EMAIL), b.lookup(EMAIL)
    assert found_a is not None and found_b is not None
    assert found_a.traits["plan"] == "gold" and found_b.traits["plan"] == "silver"
    assert found_b.identifiers == {"email": ("ada@example.com",)}  # not a's external_id
    assert b.lookup(("external_id", "u-1")) is None
    assert (ada_a.id, ada_b.id) == (found_a.id, found_b.id)
    assert stores["default"].lookup(EMAIL) is None


def test_dedup_marks_and_held_calls_stay_in_their_account(
    stores: dict[str, StateStore],
) -> None:
    a, b = stores["brand-a"], stores["brand-b"]
    a.mark_delivered(["m-1"], time.time())
    assert a.seen(["m-1"]) == {"m-1"} and b.seen(["m-1"]) == set()  # (account, messageId)
    assert a.hold("an-1", b"a held call", 100.0) is None
    assert (a.held_count(), b.held_count()) == (1, 0)
    released = b.link([("anonymous_id", "an-1"), EMAIL], None, 101.0).released
    assert released == ()  # b names an-1: a's held call is not b's to release
    assert a.held_count() == 1


def test_a_forget_in_one_account_erases_nothing_in_another(
    stores: dict[str, StateStore],
) -> None:
    a, b = stores["brand-a"], stores["brand-b"]
    for store in (a, b):
        store.link([EMAIL], {"plan": "gold"}, 10.0)
        store.hold("an-9", b"held", 10.0)
        store.link([("anonymous_id", "an-9"), ("external_id", "u-9")], None, 10.0)
    forgotten = a.forget([EMAIL], 50.0, "erase-1", ("analytics", 0, 7))
    assert forgotten.persons == 1
    assert a.lookup(EMAIL) is None
    kept = b.lookup(EMAIL)
    assert kept is not None and kept.traits["plan"] == "gold"
    assert a.tombstone_mark() > 0 and b.tombstone_mark() == 0
    assert b.tombstones(0) == ([], 0)
    assert a.open_erasures() == {"erase-1"} and b.open_erasures() == set()
    # a link in b of the forgotten email is not judged against a's deletion
    late = b.link([EMAIL], {"plan": "platinum"}, 20.0, guard=lambda tombs: bool(tombs))
    assert not late.tombstoned


def test_replica_marks_and_catalog_jobs_stay_in_their_account(
    stores: dict[str, StateStore],
) -> None:
    a, b = stores["brand-a"], stores["brand-b"]
    a.publish_mark("replica-1", 3, 30.0)
    assert a.live_replicas() == {"replica-1"} and b.live_replicas() == set()
    assert b.low_mark() is None
    a.catalog_job_started(CatalogJob("J1", "item", "create", (("item:A", ("t", 0, 1)),), 1.0))
    assert a.catalog_job("J1") is not None and b.catalog_job("J1") is None
    assert b.catalog_states(["item:A"]) == {}


def test_the_account_keeping_the_state_reads_what_a_single_account_deployment_wrote(
    store_url: str,
) -> None:
    before = open_store(store_url)  # today's deployment, no accounts file
    try:
        before.link([EMAIL], {"plan": "gold"}, 10.0)
        before.mark_delivered(["m-1"], time.time())
    finally:
        before.close()
    settings = Settings(state_url=store_url)
    stores = open_stores(settings, accounts_of(settings, "brand-a"))
    try:
        kept = stores["default"].lookup(EMAIL)
        assert kept is not None and kept.traits["plan"] == "gold"
        assert stores["default"].seen(["m-1"]) == {"m-1"}
        assert stores["brand-a"].lookup(EMAIL) is None
    finally:
        for store in stores.values():
            store.close()


def test_sqlite_keeps_each_account_in_a_file_beside_the_state_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    settings = Settings(state_url=url)
    accounts = accounts_of(settings, "brand-a")
    assert store_location(url, accounts["default"]) == (url, "ks:")
    assert store_location(url, accounts["brand-a"]) == (
        f"sqlite:///{tmp_path / 'state-brand-a.db'}",
        "ks:",
    )
    memory = "sqlite:///:memory:"
    assert store_location(memory, accounts["brand-a"])[0] == memory
    redis_url = "redis://:secret@127.0.0.1:6379/0"
    assert store_location(redis_url, accounts["brand-a"]) == (redis_url, "ks@brand-a:")
    for store in open_stores(settings, accounts).values():
        store.close()
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["state-brand-a.db", "state.db"]


def test_an_accounts_keys_in_redis_all_carry_its_prefix(clean_redis_url: str) -> None:
    """Every script and command of the Redis store writes under the store's prefix: after
    each kind of write in one account, no key outside `ks@brand-a:` exists."""
    settings = Settings(state_url=clean_redis_url)
    stores = open_stores(settings, accounts_of(settings, "brand-a"))
    a = stores["brand-a"]
    try:
        a.link([EMAIL, ("anonymous_id", "an-1")], {"plan": "gold"}, 10.0)
        a.hold("an-2", b"held", 10.0)
        a.link([("anonymous_id", "an-2"), ("phone", "+15555550100")], None, 11.0)
        a.mark_delivered(["m-1"], 10.0)
        a.forget([EMAIL], 50.0, "erase-1", ("analytics", 0, 7))
        a.fail_erasure("erase-1")
        a.publish_mark("replica-1", 3, 30.0)
        a.catalog_job_started(CatalogJob("J1", "item", "create", (("item:A", ("t", 0, 1)),), 1.0))
        a.catalog_job_finished("J1", [("item:A", True, ("t", 0, 1))])
        keys = {k.decode() for k in redis.Redis.from_url(clean_redis_url).keys("*")}
        outside = sorted(k for k in keys if not k.startswith("ks@brand-a:"))
        assert outside == ["ks:layout"], outside  # the default account's store, opened too
    finally:
        for store in stores.values():
            store.close()
