"""An upsert folded into a waiting one keeps every key it was queued under. Found by the
lifecycle model (long run: 'the pipeline never became quiescent', a `ValueError` from
`Lane.add` in a record processed anew): alice's email-only person and her userId person are
folded together in the graph, so her next upsert carries the new person id; folded into the
waiting upsert of the old person, the old person's key still pointed at the item it replaced.
A later upsert of the old person then looked for that item (gone: a `ValueError`, the record
never finished) or folded into a batch already taken (its change never sent)."""

from __future__ import annotations

from stream.core.calls import Record
from stream.delivery.batch import Item, Lane

EMAIL, PHONE = "alice@example.com", "+14155550101"


def upsert(person: str, offset: int, **profile: str) -> Item:
    return Item("profiles", profile, None, [Record("calls", 0, offset)], person=person)


def test_an_upsert_of_the_old_person_folds_into_the_latest_fold() -> None:
    lane = Lane("profiles", max_items=10)
    lane.add(upsert("p-email", 0, email=EMAIL))
    lane.add(upsert("p-user", 1, email=EMAIL, external_id="u-alice"))  # the persons folded
    lane.add(upsert("p-user", 2, external_id="u-alice", phone_number=PHONE))
    lane.add(upsert("p-email", 3, first_name="Alice"))  # only the old person's key
    batch = lane.take()
    assert batch is not None and len(batch.items) == 1
    [item] = batch.items
    assert [r.offset for r in item.records] == [0, 1, 2, 3]
    assert item.profile["first_name"] == "Alice" and item.profile["phone_number"] == PHONE


def test_an_upsert_of_the_old_person_waits_for_the_taken_batch() -> None:
    lane = Lane("profiles", max_items=10)
    lane.add(upsert("p-email", 0, email=EMAIL))
    lane.add(upsert("p-user", 1, email=EMAIL, external_id="u-alice"))
    sent = lane.take()  # on the wire: nothing may be folded into it any more
    assert sent is not None
    lane.add(upsert("p-email", 2, first_name="Alice"))
    assert [r.offset for i in sent.items for r in i.records] == [0, 1]
    assert lane.take() is None, "an upsert of a person on the wire went out beside it"
    lane.done(sent)
    after = lane.take()
    assert after is not None and [r.offset for i in after.items for r in i.records] == [2]
