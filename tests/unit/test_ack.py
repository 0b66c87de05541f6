"""The offset tracker stores only the contiguous finished prefix of each partition."""

from stream.ack import OffsetTracker

TP = ("t", 0)


def test_out_of_order_completion_moves_offset_only_over_a_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.begin(TP, offset)
    assert tracker.complete(TP, 12) is None
    assert tracker.complete(TP, 11) is None
    assert tracker.complete(TP, 10) == 13
    assert tracker.pending == 1
    assert tracker.complete(TP, 13) == 14
    assert tracker.pending == 0


def test_partitions_are_independent_and_forget_drops_pending() -> None:
    tracker = OffsetTracker()
    tracker.begin(("t", 0), 5)
    tracker.begin(("t", 1), 7)
    assert tracker.complete(("t", 1), 7) == 8
    tracker.forget([("t", 0)])
    assert tracker.pending == 0
    assert tracker.complete(("t", 0), 5) is None
