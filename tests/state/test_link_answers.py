"""`link` answers with what the store holds afterwards, also with two SQLite connections."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.state import Identifier, StateError, StateStore, open_store
from stream.state.base import KINDS
from stream.state.rules import Limits, ordered_identifiers


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """An empty store of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = str(request.getfixturevalue("clean_redis_url"))
    opened = open_store(url)
    yield opened
    opened.close()


def _random_call(rnd: random.Random) -> tuple[list[Identifier], dict[str, Any] | None, float]:
    kinds = rnd.sample(KINDS, rnd.randint(1, 4))
    ids: list[Identifier] = [(kind, f"{kind[:2]}{rnd.randrange(12)}") for kind in kinds]
    if rnd.random() < 0.3:
        ids.append(("anonymous_id", f"an{rnd.randrange(12)}"))
    traits = None
    if rnd.random() < 0.7:
        keys = rnd.sample(["plan", "city", "age", "é", "Z", "a b", "10", "9"], rnd.randint(0, 5))
        traits = {key: rnd.choice([1, "x", None, [1, {"q": None}], 2.5, True]) for key in keys}
    return ids, traits, float(rnd.choice([1, 2, 2, 3, 5, 5, 8]))


def test_link_returns_what_lookup_reads_back(store: StateStore) -> None:
    rnd = random.Random(7)
    for _ in range(300):
        ids, traits, ts = _random_call(rnd)
        if rnd.random() < 0.2:
            store.hold(f"an{rnd.randrange(12)}", b"held", now=ts)
        person = store.link(ids, traits, ts).person
        assert store.lookup(ordered_identifiers(ids)[0]) == person  # the strongest is linked


def test_sqlite_connections_sharing_a_file_answer_alike(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = open_store(url), open_store(url)
    try:
        rnd = random.Random(11)
        for _ in range(300):
            ids, traits, ts = _random_call(rnd)
            writer, reader = (first, second) if rnd.random() < 0.5 else (second, first)
            person = writer.link(ids, traits, ts).person
            strongest = ordered_identifiers(ids)[0]
            assert reader.lookup(strongest) == person
            found = writer.lookup(strongest)
            assert found is not None and list(found.traits) == list(person.traits)
    finally:
        first.close()
        second.close()


def test_sqlite_later_calls_come_first_across_connections_and_failures(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'order.db'}"
    many = Limits(email=100)  # ordering, not limits, is under test: room for every email
    first, second = open_store(url, limits=many), open_store(url, limits=many)
    try:
        first.link([("email", "a@x.io")], timestamp=1.0)
        expected = ["a@x.io"]
        for i, writer in enumerate([second, first, first, second, first, second, second]):
            if i == 3:
                with pytest.raises(StateError):  # a NaN timestamp cannot be stored
                    writer.link([("email", "a@x.io"), ("email", "nan@x.io")], timestamp=math.nan)
            value = f"e{i}@x.io"
            person = writer.link([("email", "a@x.io"), ("email", value)], timestamp=1.0).person
            expected.insert(1, value)  # equal time: this call first, in listed order
            assert person.identifiers["email"] == tuple(expected)
            other = first if writer is second else second
            assert other.lookup(("email", value)) == person
    finally:
        first.close()
        second.close()


def test_sqlite_link_of_a_known_person_reads_nothing_from_the_first_link_on(
    tmp_path: Path,
) -> None:
    """The rows this connection wrote are kept from the first link after opening: linking the
    same person again runs no read (the read of a link starts `WITH ids`)."""
    from stream.state.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "kept.db"))
    try:
        ids: list[Identifier] = [("external_id", "u1"), ("anonymous_id", "a1")]
        store.link([("email", "u1@x.io"), *ids], {"plan": "free"}, 1.0)
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        person = store.link(ids, None, 2.0).person
        store._db.set_trace_callback(None)
        assert not [s for s in statements if s.startswith("WITH ids")], statements
        assert person == store.lookup(("external_id", "u1"))
        assert person.traits == {"plan": "free"}
    finally:
        store.close()


def test_sqlite_kept_rows_give_way_to_another_connections_write(tmp_path: Path) -> None:
    """A person this connection keeps, changed meanwhile by another connection on the file:
    the next link answers with that change, not with the kept rows."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = open_store(url), open_store(url)
    try:
        ids: list[Identifier] = [("email", "a@x.io"), ("external_id", "u1")]
        first.link(ids, {"plan": "free"}, 1.0)
        first.link(ids, None, 2.0)  # kept rows in use
        second.link([*ids, ("anonymous_id", "an1")], {"plan": "pro"}, 3.0)
        person = first.link(ids, None, 4.0).person
        assert person.traits == {"plan": "pro"}
        assert person.identifiers["anonymous_id"] == ("an1",)
        assert person == second.lookup(("email", "a@x.io"))
    finally:
        first.close()
        second.close()
