"""Actions travel beside items, not as items: each kind in its own lane and its own batches.

An `Action` (consent, list, deletion) is no `Item` (an event or profile upsert) and an
`ActionBatch` no `Batch`: the send stage puts each action in its kind's lane, grouped by request
(same list, same live or historical import, same source), and each item in its own; a batch
less some of its actions (a revoked partition, the late check) keeps its kind, its order and
the send slot reserved for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stream.core.calls import Record
from stream.delivery.actions import ACTION_KINDS, Action, ActionBatch
from stream.delivery.batch import Batch, Item, Kind
from stream.delivery.send import Sender
from stream.klaviyo.consent import SUBSCRIBE
from stream.klaviyo.governor import Governor


def _action(kind: Kind, n: int = 0, **details: Any) -> Action:
    return Action(kind, {"email": f"p{n}@x.io"}, None, [Record("t", 0, n)], person=f"P{n}",
                  label=kind, **details)  # fmt: skip


def test_an_action_is_no_item_and_an_item_no_action() -> None:
    action = _action("subscribe", list_id="L1")
    item = Item("profiles", {"email": "p0@x.io"}, None, [Record("t", 0, 0)], person="P0")
    assert isinstance(action, Action) and not isinstance(action, Item)
    assert isinstance(item, Item) and not isinstance(item, Action)
    assert not isinstance(ActionBatch("subscribe"), Batch)
    assert not isinstance(Batch("events"), ActionBatch)


def test_an_actions_group_is_its_request() -> None:
    live = _action("subscribe", list_id="L1", source="web")
    backfill = _action("subscribe", 1, list_id="L1", source="web", consented_at="2026-01-01")
    assert live.group_key == "L1|live|web" and backfill.group_key == "L1|historical|web"
    assert _action("deletion", group_key="given").group_key == "given"


def test_each_action_and_item_goes_to_its_own_kinds_lane() -> None:
    async def deliver(batch: Batch | ActionBatch) -> None:
        raise AssertionError("nothing is sent: the lanes are only filled")

    async def fill() -> Sender:
        sender = Sender(Governor({}), deliver)  # not started: the lanes keep what comes
        for n, kind in enumerate(ACTION_KINDS):
            sender.add(_action(kind, n, list_id="L1", lookups=(("email", f"p{n}@x.io"),)))
        sender.add(Item("events", {"email": "e@x.io"}, {"metric": {}}, [Record("t", 0, 99)]))
        return sender

    sender = asyncio.run(fill())
    for kind in ACTION_KINDS:
        batch = sender.lanes[kind].next_batch
        assert isinstance(batch, ActionBatch) and [a.kind for a in batch.items] == [kind]
    events = sender.lanes["events"].next_batch
    assert isinstance(events, Batch) and len(events) == 1
    assert sender.lanes["profiles"].next_batch is None


@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_an_action_batch_less_some_keeps_its_kind_order_and_slot(dropped: list[bool]) -> None:
    actions = [_action("subscribe", n) for n in range(len(dropped))]
    batch = ActionBatch("subscribe", actions, reserved=SUBSCRIBE)
    rest = batch.without([a for a, drop in zip(actions, dropped, strict=True) if drop])
    assert rest.items == [a for a, drop in zip(actions, dropped, strict=True) if not drop]
    assert rest.kind == "subscribe" and rest.reserved == SUBSCRIBE
    assert batch.items == actions, "the batch it came from is left as it was"
