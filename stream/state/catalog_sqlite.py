"""The catalog's tables in the SQLite store (`stream.state.catalog` says what they hold).

A mixin of `SqliteStore`: same connection, same lock, same transactions (`_run`), so a catalog
write never makes the identity graph's kept rows look stale to another connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stream.state.catalog import CatalogJob, CatalogState, Version, newer

_T = TypeVar("_T")
_CHUNK = 500

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    key TEXT PRIMARY KEY,          -- item:<id>, variant:<id>, category:<id>
    present INTEGER,               -- 1 created or updated, 0 deleted, NULL nothing accepted
    topic TEXT,                    -- the accepted version: where it was read
    part INTEGER,
    offset INTEGER,
    job TEXT                       -- a job in progress holding it
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalog_jobs (
    id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,         -- kind, action, members (key, version), started
    started REAL NOT NULL
) WITHOUT ROWID;
"""


class SqliteCatalog:
    """`CatalogStore` on the SQLite store's connection."""

    def _run(self, begin: str, body: Callable[..., _T], *args: Any) -> _T:
        raise NotImplementedError  # SqliteStore's

    def catalog_states(self, keys: Sequence[str]) -> dict[str, CatalogState]:
        """See CatalogStore.catalog_states."""
        if not keys:
            return {}
        return self._run("BEGIN", _states, list(keys))

    def catalog_job_started(self, job: CatalogJob) -> None:
        """See CatalogStore.catalog_job_started."""
        self._run("BEGIN IMMEDIATE", _started, job)

    def catalog_job_finished(
        self, job_id: str, accepted: Sequence[tuple[str, bool, Version]]
    ) -> None:
        """See CatalogStore.catalog_job_finished."""
        self._run("BEGIN IMMEDIATE", _finished, job_id, list(accepted))

    def catalog_job(self, job_id: str) -> CatalogJob | None:
        """See CatalogStore.catalog_job."""
        row = self._run("BEGIN", _one, "SELECT payload FROM catalog_jobs WHERE id = ?", (job_id,))
        return None if row is None else CatalogJob.decode(job_id, bytes(row[0]))

    def catalog_stats(self) -> dict[str, int]:
        """See CatalogStore.catalog_stats."""
        return self._run("BEGIN", _stats)


def _states(db: sqlite3.Connection, keys: list[str]) -> dict[str, CatalogState]:
    out: dict[str, CatalogState] = {}
    for start in range(0, len(keys), _CHUNK):
        part = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(part))
        for key, present, topic, partition, offset, job in db.execute(
            f"SELECT key, present, topic, part, offset, job FROM catalog WHERE key IN ({marks})",
            part,
        ):
            version = (topic, partition, offset) if topic is not None else None
            exists = None if present is None else bool(present)
            out[key] = CatalogState(exists, version, job)
    return out


def _started(db: sqlite3.Connection, job: CatalogJob) -> None:
    db.execute(
        "INSERT OR REPLACE INTO catalog_jobs (id, payload, started) VALUES (?, ?, ?)",
        (job.id, job.encode(), job.started),
    )
    db.executemany(
        "INSERT INTO catalog (key, job) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET job = ?",
        [(key, job.id, job.id) for key, _ in job.members],
    )


def _finished(
    db: sqlite3.Connection, job_id: str, accepted: list[tuple[str, bool, Version]]
) -> None:
    stored = _states(db, [key for key, _, _ in accepted])
    rows = []
    for key, exists, version in accepted:
        if newer(version, stored.get(key, CatalogState()).version):
            rows.append((key, int(exists), *version))
    db.executemany(
        "INSERT INTO catalog (key, present, topic, part, offset) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET present = excluded.present, topic = excluded.topic,"
        " part = excluded.part, offset = excluded.offset",
        rows,
    )
    row = db.execute("SELECT payload FROM catalog_jobs WHERE id = ?", (job_id,)).fetchone()
    members = [key for key, _ in CatalogJob.decode(job_id, bytes(row[0])).members] if row else []
    members += [key for key, _, _ in accepted]
    db.executemany(
        "UPDATE catalog SET job = NULL WHERE key = ? AND job = ?", [(k, job_id) for k in members]
    )
    db.executemany(  # a member never accepted and no longer in a job: nothing to keep
        "DELETE FROM catalog WHERE key = ? AND present IS NULL AND job IS NULL",
        [(k,) for k in members],
    )
    db.execute("DELETE FROM catalog_jobs WHERE id = ?", (job_id,))


def _one(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    return db.execute(sql, params).fetchone()


def _stats(db: sqlite3.Connection) -> dict[str, int]:
    return {
        "catalog_resources": int(
            db.execute("SELECT count(*) FROM catalog WHERE present IS NOT NULL").fetchone()[0]
        ),
        "catalog_jobs": int(db.execute("SELECT count(*) FROM catalog_jobs").fetchone()[0]),
    }
