"""Batching limits: count, bytes, linger, per-profile grouping and unique_id within a batch."""

from stream.batch import Batcher, Item
from stream.calls import Source


def event(uid: str, profile: str = "a@x.io", size_hint: str = "") -> Item:
    return Item(
        "events",
        {"email": profile},
        {
            "unique_id": uid,
            "properties": {"blob": size_hint},
            "metric": {"data": {"type": "metric", "attributes": {"name": "E"}}},
        },
        [Source("t", 0, int(uid) if uid.isdigit() else 0)],
    )


def test_flushes_at_the_count_limit() -> None:
    batcher = Batcher(max_events=3)
    assert batcher.add(event("1")) == [] and batcher.add(event("2")) == []
    [full] = batcher.add(event("3"))
    assert len(full) == 3


def test_flushes_before_the_byte_limit_is_crossed() -> None:
    batcher = Batcher(max_bytes=2_000)
    ready = []
    for n in range(10):
        ready += batcher.add(event(str(n), size_hint="x" * 500))
    assert ready, "a batch must close before 2,000 bytes"
    assert all(b.size <= 2_000 for b in ready)


def test_linger_closes_an_open_batch() -> None:
    batcher = Batcher(linger_seconds=0.5)
    batcher.add(event("1"))
    opened = batcher.drain()[0].opened
    batcher.add(event("2"))
    assert batcher.due(now=opened) == []
    assert len(batcher.due(now=opened + 10)) == 1


def test_repeated_unique_id_for_one_profile_rides_along_instead_of_failing_the_request() -> None:
    batcher = Batcher()
    batcher.add(event("1"))
    batcher.add(event("1"))
    [batch] = batcher.drain()
    assert len(batch) == 1 and len(batch.sources) == 2


def test_events_are_grouped_per_profile() -> None:
    batcher = Batcher()
    for n, who in enumerate(["a@x.io", "b@x.io", "a@x.io"]):
        batcher.add(event(str(n), who))
    [batch] = batcher.drain()
    assert [len(g) for g in batch.groups.values()] == [2, 1]
