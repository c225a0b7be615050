"""Each stage's consumer group as Kafka sees it (state, members, lag), for `/v1/health`.

A stage is live when its group is `Stable` with a member: an `Empty` or `Dead` group has
nobody consuming, and while a group rebalances (`PreparingRebalance`,
`CompletingRebalance`) none of its members consumes either. After a `kill -9` Kafka keeps
the dead member until its session times out (gateway_runtime/kafka.py, 10 s), and a
restarted member's join waits for that: the stage shows as rebalancing meanwhile.
One inspection serves every health request for HEALTH_STAGES_CACHE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from gateway_runtime.kafka import KafkaConnection, make_admin
from gateway_runtime.settings import IngressSettings
from schemas.stages import STAGES, Stage
from schemas.topics import Topics

LIVE_STATE = "Stable"
_GROUP_ID_NOT_FOUND = 69  # newer brokers' answer for a group nobody ever joined


@dataclass(frozen=True, slots=True)
class GroupView:
    stage: str
    group: str
    state: str
    clients: tuple[str, ...]  # the members' client ids (`<service>-<pid>`)
    lag: int  # records of the input topic the group has not committed yet

    @property
    def live(self) -> bool:
        return self.state == LIVE_STATE and bool(self.clients)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.live else "degraded",
            "group": self.group,
            "state": self.state,
            "members": len(self.clients),
            "clients": list(self.clients),
            "lag": self.lag,
        }


class ConsumerGroups:
    """The stages' groups, inspected with an admin client and a group-less consumer (for
    the topics' end offsets), both opened once per ingress."""

    def __init__(
        self,
        admin: AIOKafkaAdminClient,
        offsets: AIOKafkaConsumer,
        namespace: str,
        *,
        cache_s: float,
        stages: tuple[Stage, ...] = STAGES,
    ) -> None:
        self._admin = admin
        self._offsets = offsets
        self._namespace = namespace
        self._topics = Topics.for_namespace(namespace)
        self._stages = stages
        self._cache_s = cache_s
        self._cached: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._inflight: asyncio.Task[dict[str, dict[str, Any]]] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: IngressSettings) -> AsyncIterator[ConsumerGroups]:
        kafka, client_id = KafkaConnection.from_settings(settings), "ingress-health"
        admin = make_admin(kafka, client_id=client_id)
        offsets = AIOKafkaConsumer(
            **kafka.client_kwargs(),
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # the end the stages can read up to
        )
        groups = cls(
            admin, offsets, settings.kafka_namespace, cache_s=settings.health_stages_cache_s
        )
        await admin.start()
        try:
            await offsets.start()
            try:
                yield groups
            finally:
                if groups._inflight is not None:
                    groups._inflight.cancel()
                await offsets.stop()
        finally:
            await admin.close()

    async def report(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Stage name → its group's view; a failed or late inspection says `unknown`.
        Concurrent callers share one inspection, and its answer is reused a while; none
        waits longer than `timeout`."""
        if self._cached and time.monotonic() - self._cached[0] < self._cache_s:
            return self._cached[1]
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._refresh(timeout))
        try:
            return await asyncio.wait_for(asyncio.shield(self._inflight), timeout)
        except TimeoutError:
            return self._unknown(f"TimeoutError: no answer within {timeout}s")

    async def _refresh(self, timeout: float) -> dict[str, dict[str, Any]]:
        try:
            views = await asyncio.wait_for(self.inspect(), timeout)
            body = {v.stage: v.as_json() for v in views}
        except Exception as exc:  # a health probe reports any failure, it never raises
            body = self._unknown(f"{type(exc).__name__}: {exc}"[:200])
        self._cached = (time.monotonic(), body)
        return body

    def _unknown(self, error: str) -> dict[str, dict[str, Any]]:
        return {
            s.name: {"status": "unknown", "group": s.group(self._namespace), "error": error}
            for s in self._stages
        }

    async def inspect(self) -> list[GroupView]:
        groups = [s.group(self._namespace) for s in self._stages]
        # One group per DescribeGroups request: aiokafka 0.14 decodes a v3 answer with the
        # v2 layout, which only holds for a single group.
        described, committed = await asyncio.gather(
            asyncio.gather(*(self._admin.describe_consumer_groups([g]) for g in groups)),
            asyncio.gather(*(self._admin.list_consumer_group_offsets(g) for g in groups)),
        )
        by_group: dict[str, tuple[str, tuple[str, ...]]] = {}
        for response in (r for responses in described for r in responses):
            for group in response.groups:
                error_code, group_id, state, members = group[0], group[1], group[2], group[5]
                if error_code == _GROUP_ID_NOT_FOUND:
                    state, members = "Dead", []
                elif error_code:
                    state, members = f"error {error_code}", []
                by_group[group_id] = (state, tuple(sorted(m[1] for m in members)))
        positions: list[dict[TopicPartition, int]] = []
        for stage, offsets in zip(self._stages, committed, strict=True):
            topic = stage.input_topic(self._topics)
            wanted = {TopicPartition(topic.name, p) for p in range(topic.partitions)}
            done = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
            positions.append({tp: done.get(tp, -1) for tp in wanted | set(done)})
        lags = await self._lags(positions)
        return [
            GroupView(s.name, g, *by_group.get(g, ("Dead", ())), lag)
            for s, g, lag in zip(self._stages, groups, lags, strict=True)
        ]

    async def _lags(self, positions: list[dict[TopicPartition, int]]) -> list[int]:
        """Per group, the sum over its partitions of end offset - committed offset (where it
        never committed, from the partition's first offset: it starts at the earliest)."""
        every = {tp for group in positions for tp in group}
        fresh = {tp for group in positions for tp, offset in group.items() if offset < 0}
        ends = await self._offsets.end_offsets(list(every))
        starts = await self._offsets.beginning_offsets(list(fresh)) if fresh else {}
        lags = []
        for group in positions:
            froms = {tp: offset if offset >= 0 else starts[tp] for tp, offset in group.items()}
            lags.append(sum(max(0, ends[tp] - offset) for tp, offset in froms.items()))
        return lags
