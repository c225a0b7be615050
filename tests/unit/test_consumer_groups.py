"""/v1/health's view of the stages' consumer groups (ingress/consumer_groups.py), on fakes
of the Kafka clients: live only when Stable with a member, lag from the committed offsets
(or the partition's start), one inspection shared and cached, never slower than asked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ingress.consumer_groups import ConsumerGroups
from schemas.stages import Stage

STAGES = (
    Stage("llm", "llm_worker", "contextualized"),
    Stage("tools", "tool_dispatcher", "tool_requested"),
)
LLM_TOPIC, TOOLS_TOPIC = "ns.turn.contextualized", "ns.tool.requested"  # 12 partitions each


class FakeAdmin:
    def __init__(self, delay: float = 0) -> None:
        self.delay, self.calls = delay, 0

    async def describe_consumer_groups(self, groups: list[str]) -> list[Any]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        [group] = groups
        if group == "ns.llm":
            members = [("m-1", "llm_worker-41", "/127.0.0.1", b"", b"")]
            return [SimpleNamespace(groups=[(0, group, "Stable", "consumer", "range", members)])]
        return [SimpleNamespace(groups=[(0, group, "PreparingRebalance", "consumer", "", [])])]

    async def list_consumer_group_offsets(self, group: str) -> dict[TopicPartition, Any]:
        if group == "ns.llm":
            return {TopicPartition(LLM_TOPIC, 0): OffsetAndMetadata(5, "")}
        return {}


class FakeOffsets:
    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 7 for tp in partitions}

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: 2 for tp in partitions}


def groups(admin: FakeAdmin, cache_s: float = 1.0) -> ConsumerGroups:
    return ConsumerGroups(admin, FakeOffsets(), "ns", cache_s=cache_s, stages=STAGES)


async def test_a_stable_group_with_a_member_is_ok_a_rebalancing_one_degraded() -> None:
    report = await groups(FakeAdmin()).report(timeout=2)
    assert report == {
        "llm": {
            "status": "ok",
            "group": "ns.llm",
            "state": "Stable",
            "members": 1,
            "clients": ["llm_worker-41"],
            "lag": (7 - 5) + 11 * (7 - 2),  # partition 0 committed; the rest from their start
        },
        "tools": {
            "status": "degraded",
            "group": "ns.tools",
            "state": "PreparingRebalance",
            "members": 0,
            "clients": [],
            "lag": 12 * (7 - 2),
        },
    }


async def test_concurrent_polls_share_one_inspection_reused_for_the_cache_time() -> None:
    admin = FakeAdmin(delay=0.05)
    inspected = groups(admin, cache_s=0.3)
    first = await asyncio.gather(*(inspected.report(timeout=2) for _ in range(5)))
    assert all(r == first[0] for r in first)
    assert admin.calls == len(STAGES)  # one DescribeGroups per group, once
    await inspected.report(timeout=2)
    assert admin.calls == len(STAGES)
    await asyncio.sleep(0.3)
    await inspected.report(timeout=2)
    assert admin.calls == 2 * len(STAGES)


async def test_a_slow_broker_makes_the_stages_unknown_within_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await groups(FakeAdmin(delay=5)).report(timeout=0.2)
    assert loop.time() - started < 1
    assert {s: r["status"] for s, r in report.items()} == {"llm": "unknown", "tools": "unknown"}
    assert report["llm"]["group"] == "ns.llm" and "TimeoutError" in report["llm"]["error"]
