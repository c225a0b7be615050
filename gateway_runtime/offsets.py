"""Which offsets are safe to commit when records finish out of order, and which records a
transaction may carry.

Records of different keys run concurrently, so a later offset can finish before an
earlier one. Only the contiguous finished prefix of each partition may be committed as
the group's position: committing past an unfinished record would lose it on a crash.

For exactly-once (gateway_runtime/stage.py) a record's outputs and the offset past it must
land in one transaction, yet a slow record must not hold back the outputs of the records
behind it in its partition (a seconds-long model call would delay every other session on
that partition). So a transaction also carries records finished *beyond* the prefix: the
position stays at the first unfinished record and the commit's metadata lists the
finished offsets past it (`encode_done`). Whoever is assigned the partition next reads
that list (`skip`) and does not handle those records again; their outputs are already in
the log. The metadata is bounded (`MAX_METADATA`, under the broker's
offset.metadata.max.bytes of 4096): a record that does not fit waits for a later
transaction, nothing is lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")
MAX_METADATA = 3000  # characters; the broker refuses a commit over 4096 by default
_TAG = "done:"  # version of the metadata format; anything else is read as "no list"


class Pending:
    """One record in flight; `done` flips when it is finished: its `outputs` (whatever the
    loop produces for it) are ready to go in a transaction; `sent` once they are committed
    while the record was still beyond the prefix; `on_commit` runs after its commit."""

    __slots__ = ("done", "forgotten", "offset", "on_commit", "outputs", "sent", "source")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.done = False
        self.sent = False
        self.forgotten = False
        self.outputs: list[Any] = []
        self.on_commit: Any = None
        self.source: Any = None


@dataclass(slots=True)
class Batch(Generic[P]):
    """What one transaction carries: the entries whose outputs it sends, and per partition
    the next offset to read with the metadata listing the finished records beyond it."""

    entries: list[Pending] = field(default_factory=list)
    offsets: dict[P, tuple[int, str]] = field(default_factory=dict)


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._pending: dict[P, deque[Pending]] = {}
        self._skips: dict[P, set[int]] = {}
        self.unsent = 0  # finished records whose outputs wait for a transaction

    def finish(self, entry: Pending) -> None:
        """The record is finished; its outputs (if any) are on it. One of a partition
        forgotten meanwhile (revoked) is not counted: no transaction will take it."""
        entry.done = True
        if not entry.forgotten:
            self.unsent += 1

    def start(self, partition: P, offset: int) -> Pending:
        """Track a polled record; one a previous owner already committed beyond its
        position (`skip`) comes back finished and sent: it must not be handled again."""
        entry = Pending(offset)
        skips = self._skips.get(partition)
        if skips and offset in skips:
            skips.discard(offset)
            entry.done = entry.sent = True
        self._pending.setdefault(partition, deque()).append(entry)
        return entry

    def skip(self, partition: P, position: int, metadata: str | None) -> None:
        """The partition was assigned with this committed position and metadata."""
        done = decode_done(position, metadata)
        if done:
            self._skips[partition] = done
        else:
            self._skips.pop(partition, None)

    def committable(self) -> dict[P, int]:
        """Next offset to commit per partition that advanced since the last call."""
        ready: dict[P, int] = {}
        for partition, queue in self._pending.items():
            while queue and queue[0].done:
                ready[partition] = queue.popleft().offset + 1
        return ready

    def take(self, max_metadata: int = MAX_METADATA) -> Batch[P]:
        """The next transaction: every finished record not yet sent, the prefix's first
        (in offset order) and then those beyond it while their list fits the metadata;
        the partition's position and metadata. Nothing changes until `settle`."""
        batch: Batch[P] = Batch()
        for partition, queue in self._pending.items():
            prefix = 0
            for entry in queue:
                if not entry.done:
                    break
                prefix += 1
            if prefix == len(queue):
                if prefix == 0:
                    continue
                position = queue[-1].offset + 1
            else:
                position = queue[prefix].offset
            beyond = [e for e in list(queue)[prefix:] if e.done]
            listed = [e.offset for e in beyond if e.sent]  # already committed: always listed
            # The previous owner's, not polled yet: still to be skipped by whoever is next.
            listed += [o for o in self._skips.get(partition, ()) if o >= position]
            fresh: list[Pending] = []
            for entry in (e for e in beyond if not e.sent):
                if len(encode_done(position, [*listed, entry.offset])) > max_metadata:
                    break
                listed.append(entry.offset)
                fresh.append(entry)
            head = [e for e in list(queue)[:prefix] if not e.sent]
            if not prefix and not fresh:
                continue
            batch.entries += head + fresh
            batch.offsets[partition] = (position, encode_done(position, listed))
        return batch

    def settle(self, batch: Batch[P]) -> None:
        """`batch` is committed: drop its prefixes, mark the rest of its records sent."""
        for entry in batch.entries:
            self.unsent -= not entry.sent
            entry.sent = True
            entry.outputs = []
        for partition, (position, _) in batch.offsets.items():
            queue = self._pending.get(partition)
            while queue and queue[0].offset < position:
                queue.popleft()

    def forget(self, partitions: set[P]) -> None:
        """Drop revoked partitions: their unfinished records will be redelivered."""
        for partition in partitions:
            for entry in self._pending.pop(partition, ()):
                self.unsent -= entry.done and not entry.sent
                entry.forgotten = True
            self._skips.pop(partition, None)

    def in_flight(self) -> int:
        return sum(len(q) for q in self._pending.values())


def encode_done(position: int, offsets: list[int]) -> str:
    """The finished offsets beyond `position`, as base-36 distances from it."""
    if not offsets:
        return ""
    return _TAG + ",".join(_b36(o - position) for o in sorted(offsets))


def decode_done(position: int, metadata: str | None) -> set[int]:
    if not metadata or not metadata.startswith(_TAG):
        return set()
    try:
        return {position + int(d, 36) for d in metadata[len(_TAG) :].split(",") if d}
    except ValueError:
        return set()


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out
