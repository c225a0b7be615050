from __future__ import annotations

from gateway_runtime.offsets import OffsetTracker


def test_only_the_contiguous_finished_prefix_is_committable() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    a0, a1, a2 = (tracker.start("p0", n) for n in (10, 11, 12))
    a2.done = True
    assert tracker.committable() == {}
    a0.done = True
    assert tracker.committable() == {"p0": 11}
    a1.done = True
    assert tracker.committable() == {"p0": 13}
    assert tracker.in_flight() == 0


def test_partitions_advance_independently_and_forget_drops_revoked() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    x = tracker.start("p0", 0)
    y = tracker.start("p1", 7)
    tracker.start("p1", 8)
    y.done = True
    assert tracker.committable() == {"p1": 8}
    tracker.forget({"p1"})
    x.done = True
    assert tracker.committable() == {"p0": 1}
    assert tracker.in_flight() == 0
