"""The completion ledger with several accounts: a record going to two accounts finishes through
one copy each, its offset moving only once both have finished, and each copy's message id goes
to its own account's dedup window only (kept where delivered, forgotten where dead-lettered)."""

from __future__ import annotations

from confluent_kafka import Message

from stream.completion.dedup import Deduplicator
from stream.completion.ledger import Ledger
from stream.core.errors import MappingError
from stream.state import open_store
from tests.support.deadletters import DeadLetterSink

TP = ("t", 0)


class FakeItem:
    def __init__(self, *records: object) -> None:
        self.records = list(records)
        self.label = None


async def test_a_fan_out_record_finishes_with_its_last_copy_in_each_accounts_window() -> None:
    stores = {name: open_store("sqlite:///:memory:") for name in ("a", "b")}
    dedups = {name: Deduplicator(store) for name, store in stores.items()}
    stored: dict[tuple[str, int], int] = {}
    letters = DeadLetterSink()
    ledger = Ledger(
        dedups["a"], letters, lambda t, p, o: stored.__setitem__((t, p), o), dedups=dedups
    )
    ledger.assign([TP])
    messages = [Message(topic="t", partition=0, offset=n, value=b"x") for n in range(2)]
    record, after = ledger.begin(messages, ledger.stamp(messages))
    copies = ledger.fan_out(record, ["a", "b"])
    assert [c.account for c in copies] == ["a", "b"] and all(c.parent is record for c in copies)
    for copy in copies:
        copy.message_id = "m1"
        assert dedups[copy.account or ""].fresh([copy]) == [True]  # new in each window
        copy.open += 1
        ledger.processed(copy)
    ledger.processed(after)  # the next record finishes first: the offset still waits
    ledger.settle([FakeItem(copies[0])])
    assert stored == {} and ledger.pending == 1
    ledger.fail([FakeItem(copies[1])], MappingError("refused by b"), "map")
    await ledger.close(timeout=10)
    assert stored == {TP: 2} and ledger.pending == 0
    assert [letter.record.account for letter in letters.letters] == ["b"]
    for dedup in dedups.values():
        dedup.flush()
    assert stores["a"].seen(["m1"]) == {"m1"}  # delivered to a: remembered there
    assert stores["b"].seen(["m1"]) == set()  # dead-lettered for b: replayable there
