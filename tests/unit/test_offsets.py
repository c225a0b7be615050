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


def test_a_transaction_carries_the_prefix_and_what_finished_beyond_it() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    a0, a1, _a2, a3 = (tracker.start("p0", n) for n in (10, 11, 12, 13))
    a1.done = a3.done = True
    batch = tracker.take()
    assert batch.entries == [a1, a3]
    assert batch.offsets == {"p0": (10, "done:1,3")}  # position at the first unfinished
    tracker.settle(batch)
    a0.done = True
    batch = tracker.take()
    assert batch.entries == [a0]  # a1 and a3 were sent already
    assert batch.offsets == {"p0": (12, "done:1")}  # 13 is still listed, not re-sent
    tracker.settle(batch)
    assert tracker.take().offsets == {}


def test_the_next_owner_skips_the_listed_offsets() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.skip("p0", 10, "done:1,3")
    entries = [tracker.start("p0", n) for n in (10, 11, 12, 13)]
    assert [e.done for e in entries] == [False, True, False, True]
    entries[0].done = entries[2].done = True
    batch = tracker.take()
    assert batch.entries == [entries[0], entries[2]] and batch.offsets == {"p0": (14, "")}


def test_the_list_is_bounded_and_what_does_not_fit_waits() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    entries = [tracker.start("p0", n) for n in range(100)]
    for entry in entries[1:]:
        entry.done = True
    batch = tracker.take(max_metadata=20)
    assert len(batch.offsets["p0"][1]) <= 20 and batch.entries == entries[1:9]


def test_the_previous_owners_list_survives_until_its_records_are_polled() -> None:
    """A commit before the listed records are polled lists them again: otherwise the
    owner after next would handle them a second time."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.skip("p0", 10, "done:2,5")  # 12 and 15 committed by the previous owner
    first = tracker.start("p0", 10)
    first.done = True
    batch = tracker.take()
    assert batch.offsets == {"p0": (11, "done:1,4")}  # 12 and 15, from the new position


def test_a_record_finished_after_its_partition_was_revoked_is_not_owed_a_transaction() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    entry = tracker.start("p0", 3)
    tracker.forget({"p0"})
    tracker.finish(entry)  # its task ran on past the revoke
    assert tracker.unsent == 0 and tracker.take().offsets == {}
