"""Which offsets are safe to commit when records finish out of order.

Records of different keys run concurrently, so a later offset can finish before an
earlier one. Only the contiguous finished prefix of each partition may be committed:
committing past an unfinished record would lose it on a crash.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

P = TypeVar("P")


class Pending:
    """One record in flight; `done` flips when its outputs are safely produced."""

    __slots__ = ("done", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.done = False


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._pending: dict[P, deque[Pending]] = {}

    def start(self, partition: P, offset: int) -> Pending:
        entry = Pending(offset)
        self._pending.setdefault(partition, deque()).append(entry)
        return entry

    def committable(self) -> dict[P, int]:
        """Next offset to commit per partition that advanced since the last call."""
        ready: dict[P, int] = {}
        for partition, queue in self._pending.items():
            while queue and queue[0].done:
                ready[partition] = queue.popleft().offset + 1
        return ready

    def forget(self, partitions: set[P]) -> None:
        """Drop revoked partitions: their unfinished records will be redelivered."""
        for partition in partitions:
            self._pending.pop(partition, None)

    def in_flight(self) -> int:
        return sum(len(q) for q in self._pending.values())
