"""State at scale: bytes per person (identity graph + traits), per remembered messageId and per
tombstone, in SQLite and in Redis, measured on stores filled the way the service fills them, and
the memory each replica's tombstone filter takes.

Persons are linked as an identify call links them (email, external_id and an anonymous id, five
traits); messageIds are random uuid4s marked delivered in flushes of 20,000. SQLite: the database
file's pages after a WAL checkpoint, one database per kind. Redis: `used_memory` before and
after, on a redis-server started for the run (no persistence). Then the memory an account of
`--account-persons` people and `--events-per-week` events needs under the default 7-day dedup
window. Tombstones are written as deletions write them (two identifiers a person, the erasure
entry settled afterwards, as a confirmed deletion leaves it); the filter is the one a replica
loads at start (`stream.identity.tombstones`).

`--catalog-resources N`: bytes per catalog resource (what Klaviyo accepted of it: its key,
version and whether it exists), written as finished jobs of 100 write them.

    python bench/state.py --persons 100000 --message-ids 1000000 --tombstones 200000
    python bench/state.py --catalog-resources 200000
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from common import machine

from stream.identity.tombstones import Tombstones
from stream.state import StateStore, open_store

FLUSH = 20_000


def fill_persons(store: StateStore, count: int) -> None:
    for n in range(count):
        store.link(
            [
                ("email", f"person.{n}@example.com"),
                ("external_id", f"user-{n}"),
                ("anonymous_id", str(uuid.UUID(int=n, version=4))),
            ],
            {"first_name": "Ada", "last_name": f"Person{n}", "plan": "pro", "visits": n % 97,
             "newsletter": n % 2 == 0},  # fmt: skip
            timestamp=1_790_000_000.0 + n,
        )


def fill_ids(store: StateStore, count: int) -> None:
    now = time.time()
    for start in range(0, count, FLUSH):
        ids = [str(uuid.uuid4()) for _ in range(min(FLUSH, count - start))]
        store.mark_delivered(ids, now)


def fill_tombstones(store: StateStore, count: int) -> None:
    for n in range(count // 2):
        erasure = f"erasure-{n}"
        store.forget(
            [("email", f"gone.{n}@example.com"), ("external_id", f"gone-{n}")],
            1_790_000_000.0 + n, erasure, ("calls", n % 12, n),
        )  # fmt: skip
        store.settle_erasure(erasure)


def filter_bytes(url: str) -> tuple[int, int]:
    """(bytes of the filter a replica builds from the store's tombstones, how many it holds)."""
    store = open_store(url)
    try:
        tombstones = Tombstones(store)
        tombstones.load()
        return tombstones.memory, tombstones.count
    finally:
        store.close()


def fill_catalog(store: StateStore, count: int) -> None:
    for start in range(0, count, 100):
        accepted = [(f"item:P{n:07d}", True, ("shop.products", n % 6, 1_000_000 + n))
                    for n in range(start, min(start + 100, count))]  # fmt: skip
        store.catalog_job_finished(f"job-{start}", accepted)


def sqlite_bytes(path: Path, fill: Callable[[StateStore], None]) -> int:
    store = open_store(f"sqlite:///{path}")
    empty = path.stat().st_size
    fill(store)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = db.execute("PRAGMA page_count").fetchone()[0], db.execute(
            "PRAGMA page_size"
        ).fetchone()[0]
    return int(pages * size - empty)


def redis_bytes(url: str, fill: Callable[[StateStore], None], keep: bool = False) -> int:
    client = redis.Redis.from_url(url)
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    store = open_store(url)
    fill(store)
    store.close()
    after = int(client.info("memory")["used_memory"])
    if not keep:
        client.flushall()
    return after - before


def redis_server(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],  # fmt: skip
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--persons", type=int, default=100_000)
    p.add_argument("--message-ids", type=int, default=1_000_000)
    p.add_argument("--account-persons", type=float, default=10e6)
    p.add_argument("--events-per-week", type=float, default=100e6)
    p.add_argument("--tombstones", type=int, default=200_000)
    p.add_argument("--account-deletions", type=float, default=5e6, help="persons ever deleted")
    p.add_argument("--catalog-resources", type=int, default=0)
    args = p.parse_args()
    persons, ids, tombs = args.persons, args.message_ids, args.tombstones
    figures: dict[str, tuple[float, float, float]] = {}
    filters: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        per_person = sqlite_bytes(Path(tmp) / "persons.db", lambda s: fill_persons(s, persons))
        per_id = sqlite_bytes(Path(tmp) / "ids.db", lambda s: fill_ids(s, ids))
        per_tomb = sqlite_bytes(Path(tmp) / "tombs.db", lambda s: fill_tombstones(s, tombs))
        figures["SQLite"] = (per_person / persons, per_id / ids, per_tomb / tombs)
        memory, count = filter_bytes(f"sqlite:///{Path(tmp) / 'tombs.db'}")
        filters["SQLite"] = memory / count
        print(f"SQLite filled in {time.perf_counter() - t0:.0f} s")
        resources = args.catalog_resources
        per_resource: dict[str, float] = {}
        if resources:
            path = Path(tmp) / "catalog.db"
            per_resource["SQLite"] = sqlite_bytes(path, lambda s: fill_catalog(s, resources))
        resources = args.catalog_resources
        per_resource: dict[str, float] = {}
        if resources:
            path = Path(tmp) / "catalog.db"
            per_resource["SQLite"] = sqlite_bytes(path, lambda s: fill_catalog(s, resources))
        proc, url = redis_server(tmp)
        try:
            t0 = time.perf_counter()
            per_person = redis_bytes(url, lambda s: fill_persons(s, persons))
            per_id = redis_bytes(url, lambda s: fill_ids(s, ids))
            per_tomb = redis_bytes(url, lambda s: fill_tombstones(s, tombs), keep=True)
            figures["Redis"] = (per_person / persons, per_id / ids, per_tomb / tombs)
            t1 = time.perf_counter()
            memory, count = filter_bytes(url)
            filters["Redis"] = memory / count
            print(f"Redis filled in {t1 - t0:.0f} s; a replica loaded {count:,} tombstones"
                  f" in {time.perf_counter() - t1:.1f} s")  # fmt: skip
            if resources:
                per_resource["Redis"] = redis_bytes(url, lambda s: fill_catalog(s, resources))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"machine: {machine()}")
    print(f"measured on {persons:,} persons, {ids:,} messageIds and {tombs:,} tombstones")
    window_ids = args.events_per_week  # the default dedup window is 7 days: one week of ids
    deleted = args.account_deletions * 2  # tombstones: two identifiers a deleted person
    for name, (person, message_id, tomb) in figures.items():
        total = args.account_persons * person + window_ids * message_id + deleted * tomb
        print(
            f"{name:<7}: {person:7.0f} bytes per person, {message_id:5.0f} bytes per messageId, "
            f"{tomb:5.0f} bytes per tombstone ({filters[name]:.2f} in each replica's filter); "
            f"{args.account_persons / 1e6:g}M persons + {window_ids / 1e6:g}M ids in the window "
            f"+ {deleted / 1e6:g}M tombstones = {total / 2**30:.1f} GiB"
            f" (filter {deleted * filters[name] / 2**20:.0f} MiB a replica)"
        )
    for name, size in per_resource.items():
        each = size / args.catalog_resources
        print(f"{name:<7}: {each:5.0f} bytes per catalog resource "
              f"(1M products with 3 variants each: {each * 4e6 / 2**20:.0f} MiB)")  # fmt: skip
    for name, size in per_resource.items():
        each = size / args.catalog_resources
        print(f"{name:<7}: {each:5.0f} bytes per catalog resource "
              f"(1M products with 3 variants each: {each * 4e6 / 2**20:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
