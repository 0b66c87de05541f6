"""Action lanes (one request group per batch, Klaviyo's count per request) and the gate (each
person's actions in order, after what they follow; erasure entries settled only when Klaviyo
accepted every deletion)."""

from __future__ import annotations

from typing import Any

from stream.core.calls import Record, normalize
from stream.delivery.actions import Action, ActionBatch, action_lanes
from stream.delivery.batch import Item
from stream.delivery.deliver import endpoint_for
from stream.engine.gate import Gate
from stream.identity.erasure import Erasure
from stream.identity.resolver import IdentityResolver
from stream.state import open_store

ADA = {"email": "ada@example.com"}


def record(n: int = 0) -> Record:
    return Record("t", 0, n)


def action(kind: Any = "subscribe", person: str = "p", rec: Record | None = None,
           **details: Any) -> Action:  # fmt: skip
    return Action(kind, ADA, None, [rec or record()], person=person, label=kind, **details)


def test_actions_batch_per_request_group_and_close_at_klaviyos_count() -> None:
    lanes = action_lanes()
    subscribe = lanes["subscribe"]
    live, listed = action(channels=("email",)), action(channels=("email",), list_id="L1")
    historical = action(channels=("email",), consented_at="2021-01-01T00:00:00+00:00")
    sms = action(channels=("sms",))
    for item in (live, listed, historical, sms):
        subscribe.add(item)
    assert subscribe.items == 4 and not subscribe.full
    first = subscribe.take()  # the oldest request group: live, no list
    assert isinstance(first, ActionBatch) and first.items == [live, sms]
    groups = [subscribe.take() for _ in range(2)]
    assert [[a.list_id for a in b.actions] for b in groups if b] == [["L1"], [None]]
    assert subscribe.take() is None and subscribe.items == 0
    unsubscribe = lanes["unsubscribe"]
    for n in range(101):  # Klaviyo takes 100 unsubscriptions a request
        unsubscribe.add(action("unsubscribe", person=f"p{n}", channels=("email",)))
    assert unsubscribe.full and unsubscribe.next_size == 100
    full, rest = unsubscribe.take(), unsubscribe.take()
    assert full is not None and rest is not None and (len(full), len(rest)) == (100, 1)
    assert lanes["deletion"].__class__ is unsubscribe.__class__


def test_each_kind_has_its_own_budget_and_client_mode_subscribes_one_at_a_time() -> None:
    assert endpoint_for("subscribe", 5) == "/api/profile-subscription-bulk-create-jobs"
    assert endpoint_for("subscribe", 1, client_mode=True) == "/client/subscriptions"
    assert endpoint_for("list_add", 9) != endpoint_for("list_remove", 9)
    assert endpoint_for("deletion", 1) == "/api/data-privacy-deletion-jobs"
    client = action_lanes(client_mode=True)["subscribe"]
    client.add(action(channels=("email",), list_id="L1"))
    client.add(action(person="q", channels=("email",), list_id="L1"))
    assert client.full and client.next_size == 1


async def test_one_persons_actions_leave_one_at_a_time_in_order() -> None:
    sent: list[Item] = []
    gate = Gate(sent.append, lambda _r: True)
    a1, a2, b1 = action(person="p"), action("suppress", person="p"), action(person="q")
    for a in (a1, a2, b1):
        gate.put(a)
    assert sent == [a1, b1]  # p's second waits for p's first
    gate.poll()
    assert sent == [a1, b1]
    await gate.answered([a1])
    assert sent == [a1, b1, a2]


async def test_a_list_change_waits_for_its_records_own_items_however_they_were_batched() -> None:
    sent: list[Item] = []
    gate = Gate(sent.append, lambda _r: True)
    mine, other = record(1), record(2)
    change = action("list_add", rec=mine, list_id="L1", after=2)
    gate.put(change)
    assert sent == []
    await gate.answered([Item("events", ADA, {"n": 1}, [mine])])  # one of its two items
    assert sent == []
    # its second item was folded with another record's into one (a newer snapshot)
    await gate.answered([Item("profiles", ADA, None, [other, mine])])
    assert sent == [change]


async def test_a_deletion_waits_for_every_earlier_record_of_its_partition() -> None:
    sent: list[Item] = []
    finished = {"earlier": False}
    gate = Gate(sent.append, lambda _r: finished["earlier"])
    deletion = action("deletion", person="erasure:d", fence=True, target=("email", "a@x.io"))
    gate.put(deletion)
    gate.poll()
    assert sent == []
    finished["earlier"] = True  # a dead letter acknowledged, say: no batch answer tells
    gate.poll()
    assert sent == [deletion]


async def test_erasure_entries_go_only_once_klaviyo_accepted_every_deletion() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        store.link([("email", "a@x.io"), ("phone", "+14155552671")], None, 1.0)
        store.link([("email", "b@x.io")], None, 1.0)
        call = normalize("delete", {"messageId": "del-a", "timestamp": "2026-01-01T00:00:00Z",
                                    "traits": {"email": "a@x.io"}})  # fmt: skip
        other = normalize("delete", {"messageId": "del-b", "timestamp": "2026-01-01T00:00:00Z",
                                     "traits": {"email": "b@x.io"}})  # fmt: skip
        erasure = Erasure(store, IdentityResolver(store))
        sent: list[Item] = []
        gate = Gate(sent.append, lambda _r: True, erasure)
        deletions = []
        for c in (call, other):
            forgotten = erasure.forget(c, [("email", c.traits["email"])])
            ids = [i for i in forgotten.identifiers if i[0] != "anonymous_id"]
            erasure.expect(c.message_id, len(ids), forgotten.identifiers)
            deletions.append([action("deletion", person=c.message_id, erasure=c.message_id,
                                     target=i) for i in ids])  # fmt: skip
        a_email, a_phone = deletions[0]
        [b_email] = deletions[1]
        # a newer call naming a's phone waits for a's erasure, however long it takes
        held = Item("profiles", {"phone_number": "+14155552671"}, None, [record(9)])
        gate.hold(["del-a"], [held], [])
        await gate.answered([a_email])
        assert held not in sent
        await gate.answered([a_phone], failed=[a_phone])  # dead-lettered: a replay needs it
        assert held in sent
        await gate.answered([b_email])
        again = store.forget([("email", "a@x.io")], 0.0, "del-a")
        assert again.again and set(again.identifiers) == {("email", "a@x.io"),
                                                          ("phone", "+14155552671")}
        done = store.forget([("email", "b@x.io")], 0.0, "del-b")
        assert done.again and done.identifiers == ()  # settled: applied, nothing to resend
    finally:
        store.close()
