"""The offset tracker stores only the contiguous finished prefix of each partition."""

from stream.ack import OffsetTracker
from stream.calls import Source


def at(partition: int, *offsets: int) -> list[Source]:
    return [Source("t", partition, offset) for offset in offsets]


def test_out_of_order_completion_moves_offset_only_over_a_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    tracker.begin(at(0, 10, 11, 12, 13))
    assert tracker.complete(at(0, 12)) == {}
    assert tracker.complete(at(0, 11)) == {}
    assert tracker.complete(at(0, 10)) == {("t", 0): 13}
    assert tracker.pending == 1
    assert tracker.complete(at(0, 13)) == {("t", 0): 14}
    assert tracker.pending == 0


def test_one_call_completes_many_records_of_several_partitions() -> None:
    tracker = OffsetTracker()
    tracker.begin(at(0, 1, 2, 3) + at(1, 7, 8))
    assert tracker.complete(at(0, 3, 1) + at(1, 8)) == {("t", 0): 2}
    assert tracker.complete(at(1, 7) + at(0, 2)) == {("t", 0): 4, ("t", 1): 9}
    assert tracker.pending == 0


def test_partitions_are_independent_and_forget_drops_pending() -> None:
    tracker = OffsetTracker()
    tracker.begin(at(0, 5) + at(1, 7))
    assert tracker.complete(at(1, 7)) == {("t", 1): 8}
    tracker.forget([("t", 0)])
    assert tracker.pending == 0
    assert tracker.complete(at(0, 5)) == {}
