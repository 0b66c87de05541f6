"""Lanes: batches close on count and bytes; per-profile grouping; a repeated unique_id rides
along; one profile upsert per person in flight, the newest snapshot winning."""

from stream.core.calls import Record
from stream.delivery.batch import Item, Lane


def event(uid: str, profile: str = "a@x.io", size_hint: str = "") -> Item:
    return Item(
        "events",
        {"email": profile},
        {
            "unique_id": uid,
            "properties": {"blob": size_hint},
            "metric": {"data": {"type": "metric", "attributes": {"name": "E"}}},
        },
        [Record("t", 0, int(uid) if uid.isdigit() else 0)],
    )


def profile(person: str, n: int, plan: str) -> Item:
    attributes = {"external_id": person, "properties": {"plan": plan}}
    return Item("profiles", attributes, None, [Record("t", 0, n)], person=person)


def test_a_batch_closes_at_the_count_limit() -> None:
    lane = Lane("events", max_items=3)
    for uid in "123":
        lane.add(event(uid))
    assert lane.full and lane.next_size == 3
    lane.add(event("4"))
    assert [len(b) for b in lane.drain()] == [3, 1]


def test_a_batch_closes_before_the_byte_limit_is_crossed() -> None:
    lane = Lane("events", max_items=1000, max_bytes=2_000)
    for n in range(10):
        lane.add(event(str(n), size_hint="x" * 500))
    batches = lane.drain()
    assert len(batches) > 1, "a batch must close before 2,000 bytes"
    assert all(b.size <= 2_000 for b in batches)
    assert sum(len(b) for b in batches) == 10


def test_repeated_unique_id_for_one_profile_rides_along_instead_of_failing_the_request() -> None:
    lane = Lane("events", max_items=1000)
    lane.add(event("1"))
    lane.add(event("1"))
    [batch] = lane.drain()
    assert len(batch) == 1 and len(batch.records) == 2


def test_events_are_grouped_per_profile() -> None:
    lane = Lane("events", max_items=1000)
    for n, who in enumerate(["a@x.io", "b@x.io", "a@x.io"]):
        lane.add(event(str(n), who))
    [batch] = lane.drain()
    assert [len(g) for g in batch.groups.values()] == [2, 1]


def test_a_newer_profile_snapshot_replaces_the_waiting_one_and_carries_its_records() -> None:
    lane = Lane("profiles", max_items=100)
    lane.add(profile("p1", 1, "free"))
    lane.add(profile("p2", 2, "free"))
    lane.add(profile("p1", 3, "pro"))
    [batch] = lane.drain()
    assert [i.profile["properties"]["plan"] for i in batch.items] == ["pro", "free"]
    assert sorted(r.offset for r in batch.items[0].records) == [1, 3]
    assert len(batch.records) == 3


def test_a_person_with_an_upsert_in_flight_waits_for_its_answer() -> None:
    lane = Lane("profiles", max_items=100)
    lane.add(profile("p1", 1, "free"))
    first = lane.take()
    assert first is not None
    lane.add(profile("p1", 2, "pro"))
    lane.add(profile("p1", 3, "enterprise"))
    lane.add(profile("p2", 4, "free"))
    second = lane.take()
    assert second is not None and [i.person for i in second.items] == ["p2"]
    assert lane.take() is None, "p1's newer snapshot must wait for the first request's answer"
    lane.done(first)
    [third] = lane.drain()
    assert [i.profile["properties"]["plan"] for i in third.items] == ["enterprise"]
    assert sorted(r.offset for r in third.records) == [2, 3]


def test_a_replaced_snapshot_in_a_full_batch_keeps_the_batch_within_its_limits() -> None:
    lane = Lane("profiles", max_items=2)
    lane.add(profile("p1", 1, "free"))
    lane.add(profile("p2", 2, "free"))  # full now
    lane.add(profile("p1", 3, "pro"))  # replaces p1 inside the full batch
    [batch] = lane.drain()
    assert len(batch) == 2 and batch.items[0].profile["properties"]["plan"] == "pro"


def test_case6_an_upsert_waits_for_the_in_flight_upsert_of_a_person_it_absorbed() -> None:
    """P2 (email e2 only) has an upsert on the wire; a link folds P2 into P1, whose upsert now
    carries e2: it waits for P2's answer (their person ids differ; the email does not). So does
    one that took a phone from another person."""
    lane = Lane("profiles", max_items=10)
    p2 = Item("profiles", {"email": "e2@x.io"}, None, [Record("t", 0, 1)], person="P2")
    lane.add(p2)
    on_the_wire = lane.take()
    assert on_the_wire is not None and on_the_wire.items == [p2]
    p1 = Item("profiles", {"external_id": "u1", "email": "e2@x.io"}, None, [Record("t", 0, 2)],
              person="P1")  # fmt: skip
    lane.add(p1)
    bob = Item("profiles", {"phone_number": "+14155550100"}, None, [Record("t", 0, 3)],
               person="B")  # fmt: skip
    lane.add(bob)
    assert lane.parked == 1 and lane.items == 1  # P1 waits; Bob goes
    bobs = lane.take()
    assert bobs is not None and bobs.items == [bob]
    ann = Item("profiles", {"email": "ann@x.io", "phone_number": "+14155550100"}, None,
               [Record("t", 0, 4)], person="A")  # fmt: skip
    lane.add(ann)  # the phone moved from Bob to Ann
    assert lane.parked == 2 and lane.take() is None
    lane.done(bobs)
    after_bob = lane.take()
    assert after_bob is not None and after_bob.items == [ann] and lane.parked == 1
    lane.done(on_the_wire)
    after_p2 = lane.take()
    assert after_p2 is not None and after_p2.items == [p1] and lane.parked == 0
