"""gateway_runtime.kafka.GroupConsumer's gate: aiokafka hands out a newly assigned
partition's records before the rebalance listener has learnt what the previous owner
committed beyond its position; those records are put back until the partition is ready.

aiokafka's consumer is stood in for by a scripted one (what its `getmany` returns, where
`seek` puts a partition): the gate's logic is the subject, not the broker."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway_runtime.kafka import GroupConsumer


@dataclass
class Record:
    offset: int


@dataclass
class ScriptedConsumer:
    batches: list[dict[str, list[Record]]]
    assigned: set[str] = field(default_factory=lambda: {"p0", "p1"})
    sought: list[tuple[str, int]] = field(default_factory=list)

    async def getmany(self, *, timeout_ms: int) -> dict[str, list[Record]]:
        return self.batches.pop(0) if self.batches else {}

    def assignment(self) -> set[str]:
        return self.assigned

    def seek(self, tp: str, offset: int) -> None:
        self.sought.append((tp, offset))


def gate(*batches: dict[str, list[Record]]) -> tuple[GroupConsumer, ScriptedConsumer]:
    scripted = ScriptedConsumer(list(batches))
    return GroupConsumer(scripted), scripted  # type: ignore[arg-type]


async def test_a_partition_not_ready_is_put_back_not_handed_out() -> None:
    group, scripted = gate({"p0": [Record(7), Record(8)], "p1": [Record(3)]})
    group.ready(["p1"])
    got = await group.getmany(timeout_ms=10)
    assert got == {"p1": [Record(3)]}
    assert scripted.sought == [("p0", 7)]  # fetched again from its first record


async def test_once_ready_its_records_come() -> None:
    group, scripted = gate({"p0": [Record(7)]}, {"p0": [Record(7)]})
    assert await group.getmany(timeout_ms=10) == {}
    group.ready(["p0"])
    assert await group.getmany(timeout_ms=10) == {"p0": [Record(7)]}
    group.unready(["p0"])  # revoked
    scripted.batches.append({"p0": [Record(8)]})
    assert await group.getmany(timeout_ms=10) == {}


async def test_a_listener_that_failed_stops_the_loop() -> None:
    group, _ = gate()
    group.fail(RuntimeError("committed offsets unreadable"))
    with pytest.raises(RuntimeError):
        await group.getmany(timeout_ms=10)
