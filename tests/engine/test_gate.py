"""Action lanes (one request group per batch, Klaviyo's count per request) and the gate (the
actions naming one Klaviyo identity in order, each after what it follows; a deletion after the
group-wide fence, followed until confirmed)."""

from __future__ import annotations

from typing import Any

from stream.completion.ledger import Ledger
from stream.core.calls import Record, normalize
from stream.delivery.actions import Action, ActionBatch, action_lanes
from stream.delivery.batch import Item
from stream.delivery.endpoints import endpoint_for
from stream.engine.gate import Gate
from stream.identity.erasure import Erasure
from stream.identity.fence import Fence
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
    assert endpoint_for("confirm", 100) == "/api/profiles"  # lookups: the read budget
    client = action_lanes(client_mode=True)["subscribe"]
    client.add(action(channels=("email",), list_id="L1"))
    client.add(action(person="q", channels=("email",), list_id="L1"))
    assert client.full and client.next_size == 1


async def test_one_persons_actions_leave_one_at_a_time_in_order() -> None:
    sent: list[Item] = []
    gate = Gate(sent.append)
    a1 = action(person="p")
    a2 = action("suppress", person="p")
    b1 = Action("subscribe", {"email": "bo@x.io"}, None, [record()], person="q")
    for a in (a1, a2, b1):
        gate.put(a)
    assert sent == [a1, b1]  # p's second waits for p's first
    gate.poll()
    assert sent == [a1, b1]
    await gate.answered([a1])
    assert sent == [a1, b1, a2]


async def test_case6_order_survives_a_fold_and_a_moved_identifier() -> None:
    """P2's (email-only) subscribe is on the wire; an identify folds P2 into P1 and asks an
    unsubscribe under P1: it names P2's email, so it waits for the subscribe's answer. Same
    for a phone that moved from one person to another."""
    sent: list[Item] = []
    gate = Gate(sent.append)
    subscribe = Action("subscribe", {"email": "e2@x.io"}, None, [record(1)], person="P2",
                       channels=("email",))  # fmt: skip
    unsubscribe = Action("unsubscribe", {"external_id": "u1", "email": "e2@x.io"}, None,
                         [record(2)], person="P1", channels=("email",))  # fmt: skip
    gate.put(subscribe)
    gate.put(unsubscribe)
    assert sent == [subscribe]
    moved_from = Action("subscribe", {"phone_number": "+14155550100"}, None, [record(3)],
                        person="A", channels=("sms",))  # fmt: skip
    moved_to = Action("unsubscribe", {"email": "b@x.io", "phone_number": "+14155550100"}, None,
                      [record(4)], person="B", channels=("sms",))  # fmt: skip
    gate.put(moved_from)
    gate.put(moved_to)
    assert sent == [subscribe, moved_from]
    await gate.answered([moved_from])
    assert sent == [subscribe, moved_from, moved_to]
    await gate.answered([subscribe])
    assert sent[-1] is unsubscribe


async def test_a_list_change_waits_for_its_records_own_items_however_they_were_batched() -> None:
    sent: list[Item] = []
    gate = Gate(sent.append)
    mine, other = record(1), record(2)
    change = action("list_add", rec=mine, list_id="L1", after=2)
    gate.put(change)
    assert sent == []
    await gate.answered([Item("events", ADA, {"n": 1}, [mine])])  # one of its two items
    assert sent == []
    # its second item was folded with another record's into one (a newer snapshot)
    await gate.answered([Item("profiles", ADA, None, [other, mine])])
    assert sent == [change]


def deletion_of(erasure_id: str, seq: int, rec: Record | None = None) -> Action:
    return Action(
        "deletion", {"email": "a@x.io"}, None, [rec or record()], person="erasure:" + erasure_id,
        label="deletion", erasure=erasure_id, seq=seq, lookups=(("email", "a@x.io"),),
    )  # fmt: skip


async def test_case3_a_deletion_waits_until_every_live_replica_published_its_mark() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        erasure = Erasure(store, IdentityResolver(store))
        fence = Fence(store, erasure, replica="here")
        sent: list[Item] = []
        gate = Gate(sent.append, erasure=erasure, fence=fence)
        call = normalize("delete", {"messageId": "d", "timestamp": "2026-01-01T00:00:00Z",
                                    "traits": {"email": "a@x.io"}})  # fmt: skip
        forgotten = erasure.forget(call, [("email", "a@x.io")], record())
        store.publish_mark("there", forgotten.seq - 1, ttl=60.0)  # it began work before
        on_the_wire = fence.sending(forgotten.seq - 1)  # and so did we, before it
        fence.heartbeat()
        deletion = deletion_of("d", forgotten.seq)
        gate.put(deletion)
        assert sent == []
        fence.answered(on_the_wire)
        fence.heartbeat()
        gate.poll()
        assert sent == []  # the other replica still has older work out
        store.publish_mark("there", forgotten.seq, ttl=60.0)
        fence.heartbeat()
        gate.poll()
        assert sent == [deletion]
    finally:
        store.close()


async def test_case4_a_deletion_is_done_when_confirmed_and_only_then_its_comebacks_go() -> None:
    store = open_store("sqlite:///:memory:")
    now = [1000.0]
    try:
        store.link([("email", "a@x.io"), ("phone", "+14155552671")], None, 1.0)
        erasure = Erasure(store, IdentityResolver(store))
        sent: list[Item] = []
        gate = Gate(sent.append, erasure=erasure, settle_seconds=30.0, clock=lambda: now[0])
        call = normalize("delete", {"messageId": "d", "timestamp": "2026-01-01T00:00:00Z",
                                    "traits": {"email": "a@x.io"}})  # fmt: skip
        delete_record = record(5)
        forgotten = erasure.forget(call, [("email", "a@x.io")], delete_record)
        assert store.open_erasures() == {"d"}
        deletion = deletion_of("d", forgotten.seq, delete_record)
        Ledger.expect(delete_record)
        gate.put(deletion)
        comeback = Item("profiles", {"email": "a@x.io"}, None, [record(9)])
        gate.hold(["d"], [comeback], [])
        assert sent == [deletion]
        await gate.answered([deletion])  # Klaviyo took it: a confirmation, a settle time later
        assert delete_record.open == 3 and comeback not in sent  # + the confirmation
        gate.poll()
        assert len(sent) == 1
        now[0] += 30.0
        gate.poll()
        first = sent[-1]
        assert isinstance(first, Action) and first.kind == "confirm" and first.round == 1
        first.found = 1  # a job accepted before the deletion made the profile again
        await gate.answered([first])
        now[0] += 30.0
        gate.poll()
        second = sent[-1]
        assert isinstance(second, Action) and second.round == 2 and comeback not in sent
        await gate.answered([second])  # nothing found: confirmed
        assert store.open_erasures() == set() and comeback in sent
        assert store.forget([("email", "a@x.io")], 0.0, "d").identifiers == ()  # settled
    finally:
        store.close()


async def test_a_dead_lettered_deletion_keeps_its_entry_and_lets_comebacks_go() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        store.link([("email", "a@x.io")], None, 1.0)
        erasure = Erasure(store, IdentityResolver(store))
        sent: list[Item] = []
        gate = Gate(sent.append, erasure=erasure)
        call = normalize("delete", {"messageId": "d", "timestamp": "2026-01-01T00:00:00Z",
                                    "traits": {"email": "a@x.io"}})  # fmt: skip
        deletion = deletion_of("d", erasure.forget(call, [("email", "a@x.io")], record()).seq)
        gate.put(deletion)
        comeback = Item("profiles", {"email": "a@x.io"}, None, [record(9)])
        gate.hold(["d"], [comeback], [])
        await gate.answered([deletion], failed=[deletion])
        assert comeback in sent and store.open_erasures() == set()
        again = store.forget([("email", "a@x.io")], 0.0, "d")  # the replayed delete call
        assert again.again and again.identifiers == (("email", "a@x.io"),)
    finally:
        store.close()
