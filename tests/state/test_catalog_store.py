"""The catalog's part of the state store, against both backends: accepted versions only move
forward, job pointers and jobs survive a reopen (a crash) until the job finished."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from stream.state import StateStore, open_store
from stream.state.catalog import CatalogJob, CatalogState, Version, newer


def job(job_id: str, *members: tuple[str, Version], action: str = "create") -> CatalogJob:
    return CatalogJob(job_id, "item", action, tuple(members), 1.0)


def test_a_job_survives_a_reopen_and_its_finish_records_what_was_accepted(
    opener: Callable[[], StateStore],
) -> None:
    first = opener()
    assert first.catalog_states(["item:A"]) == {}
    first.catalog_job_started(job("J1", ("item:A", ("t", 0, 5)), ("item:B", ("t", 1, 2))))
    first.close()
    store = opener()  # the process that sent J1 crashed; another one reads the store
    states = store.catalog_states(["item:A", "item:B", "item:C"])
    assert states == {"item:A": CatalogState(job="J1"), "item:B": CatalogState(job="J1")}
    assert store.catalog_job("J1") == job("J1", ("item:A", ("t", 0, 5)), ("item:B", ("t", 1, 2)))
    store.catalog_job_finished("J1", [("item:A", True, ("t", 0, 5))])  # B failed: not accepted
    assert store.catalog_states(["item:A", "item:B"]) == {
        "item:A": CatalogState(True, ("t", 0, 5), None)
    }
    assert store.catalog_job("J1") is None
    assert store.catalog_stats() == {"catalog_resources": 1, "catalog_jobs": 0}


def test_an_older_version_accepted_after_a_newer_one_changes_nothing(store: StateStore) -> None:
    store.catalog_job_started(job("J2", ("item:A", ("t", 0, 9))))
    store.catalog_job_finished("J2", [("item:A", False, ("t", 0, 9))])  # deleted at offset 9
    store.catalog_job_started(job("J1", ("item:A", ("t", 0, 4))))
    store.catalog_job_finished("J1", [("item:A", True, ("t", 0, 4))])  # a stale job finishing
    assert store.catalog_states(["item:A"])["item:A"] == CatalogState(False, ("t", 0, 9), None)
    store.catalog_job_finished("J3", [("item:A", True, ("u", 3, 1))])  # another partition wins
    assert store.catalog_states(["item:A"])["item:A"].version == ("u", 3, 1)


def test_a_newer_job_keeps_its_pointer_when_an_older_one_finishes(store: StateStore) -> None:
    store.catalog_job_started(job("J1", ("item:A", ("t", 0, 1))))
    store.catalog_job_started(job("J2", ("item:A", ("t", 0, 2)), action="update"))
    store.catalog_job_finished("J1", [])
    assert store.catalog_states(["item:A"])["item:A"].job == "J2"


def test_a_sqlite_file_of_layout_v1_gains_the_catalog_tables(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE held (seq INTEGER PRIMARY KEY AUTOINCREMENT, anonymous_id TEXT NOT NULL,"
            " payload BLOB NOT NULL, held_at REAL NOT NULL, lease_until REAL);"
            "PRAGMA user_version = 1;"
        )
    store = open_store(f"sqlite:///{path}")
    try:
        store.catalog_job_finished("J", [("category:C", True, ("t", 0, 0))])
        assert store.catalog_states(["category:C"])["category:C"].exists is True
    finally:
        store.close()


versions = st.tuples(st.sampled_from(["t", "u"]), st.integers(0, 1), st.integers(0, 50))


@given(st.lists(versions, max_size=12))
def test_the_version_kept_is_the_last_of_its_partition_or_the_last_arrival(
    accepted: list[Version],
) -> None:
    """Model: per partition offsets only grow; a version of another partition replaces."""
    store = open_store("sqlite:///:memory:")
    model: Version | None = None
    try:
        for n, version in enumerate(accepted):
            store.catalog_job_finished(f"J{n}", [("item:A", True, version)])
            if newer(version, model):
                model = version
        found = store.catalog_states(["item:A"]).get("item:A")
        assert (found.version if found else None) == model
    finally:
        store.close()
