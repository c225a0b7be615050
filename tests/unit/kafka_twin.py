"""An in-memory twin of the stage loop's Kafka ports, for testing the loop itself.

`MemoryConsumer` hands out the records fed to it and records every commit; the
`MemoryPublisher` keeps what is published per topic and fails on demand;
`MemoryTransactions` does both at once, all or nothing, as a Kafka transaction does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway_runtime.errors import DependencyUnavailable, PublishRefused
from gateway_runtime.ports import ConsumedRecord
from gateway_runtime.transactions import RecordRefused
from schemas.codec import EncodedEvent


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class MemoryConsumer:
    def __init__(self) -> None:
        self._ready: list[Record] = []
        self._fed = asyncio.Event()
        self._next_offset: dict[tuple[str, int], int] = {}
        self.commits: list[dict[Any, int]] = []
        self.fail_commits = 0  # how many commits to refuse
        self.refused = 0  # commits refused so far
        self.polls = 0  # getmany calls begun
        self.polling = False  # one is waiting now

    def feed(self, topic: str, partition: int, record: EncodedEvent) -> Record:
        offset = self._next_offset.get((topic, partition), 0)
        self._next_offset[(topic, partition)] = offset + 1
        fed = Record(topic, partition, offset, record.key, record.value, record.headers)
        self._ready.append(fed)
        self._fed.set()
        return fed

    async def getmany(self, *, timeout_ms: int) -> Mapping[Any, Sequence[ConsumedRecord]]:
        self.polls += 1
        self.polling = True
        try:
            return await self._poll(timeout_ms)
        finally:
            self.polling = False

    async def _poll(self, timeout_ms: int) -> Mapping[Any, Sequence[ConsumedRecord]]:
        if not self._ready:
            self._fed.clear()
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    await self._fed.wait()
            except TimeoutError:
                return {}
        batches: dict[Any, list[ConsumedRecord]] = {}
        for record in self._ready:
            batches.setdefault((record.topic, record.partition), []).append(record)
        self._ready = []
        return batches

    async def commit(self, offsets: Mapping[Any, int]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            self.refused += 1
            raise DependencyUnavailable("commit refused (test)")
        self.commits.append(dict(offsets))

    def committed(self, topic: str, partition: int) -> int | None:
        """The last committed offset of a partition (the next one to read)."""
        for commit in reversed(self.commits):
            if (topic, partition) in commit:
                return commit[(topic, partition)]
        return None


@dataclass
class MemoryPublisher:
    published: dict[str, list[EncodedEvent]] = field(default_factory=dict)
    # topic -> called before each publish to it; raise to make that publish fail
    failures: dict[str, Callable[[EncodedEvent], None]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    async def publish(self, topic: str, record: EncodedEvent) -> None:
        self.attempts[topic] = self.attempts.get(topic, 0) + 1
        if topic in self.failures:
            self.failures[topic](record)
        self.published.setdefault(topic, []).append(record)


@dataclass
class MemoryTransactions:
    """Records and offsets committed together into `consumer` and `published`; a failure
    (from `failures`, per topic) leaves nothing of the transaction behind."""

    consumer: MemoryConsumer
    published: dict[str, list[EncodedEvent]] = field(default_factory=dict)
    failures: dict[str, Callable[[EncodedEvent], None]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    metadata: dict[Any, str] = field(default_factory=dict)  # partition -> last metadata
    transactions: int = 0

    async def commit(
        self, records: Sequence[tuple[str, EncodedEvent]], offsets: Mapping[Any, tuple[int, str]]
    ) -> None:
        staged: list[tuple[str, EncodedEvent]] = []
        for index, (topic, record) in enumerate(records):
            self.attempts[topic] = self.attempts.get(topic, 0) + 1
            try:
                if topic in self.failures:
                    self.failures[topic](record)
            except PublishRefused as exc:
                raise RecordRefused(index, str(exc)) from exc
            staged.append((topic, record))
        await self.consumer.commit({tp: offset for tp, (offset, _) in offsets.items()})
        for topic, record in staged:
            self.published.setdefault(topic, []).append(record)
        self.metadata.update({tp: metadata for tp, (_, metadata) in offsets.items()})
        self.transactions += 1
