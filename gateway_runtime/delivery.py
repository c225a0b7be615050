"""Which Kafka record a stage handler is working on, for the few handlers that must know.

The stage loop runs each record in a task of its own and sets the record's delivery
there, so `current_delivery()` inside `handle()` is that record's. The policy stage uses
it to tell a redelivery of the same record (run it) from a second record of the same
turn (drop it), and a dead-letter replay by its headers.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from schemas.codec import Headers, header

# Headers a dead-letter replay adds to the record it sends back to its source topic;
# they survive a second dead-lettering (unlike the `dlq-` provenance headers).
REPLAY_OF = "replay-of"
REPLAY_COUNT = "replay-count"
# Where the replayed dead letter's record failed: `<topic>/<partition>/<offset>`.
REPLAY_SOURCE = "replay-source"
REPLAY_HEADERS = frozenset((REPLAY_OF, REPLAY_COUNT, REPLAY_SOURCE))


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    partition: int
    offset: int
    headers: Headers

    @property
    def replay_of(self) -> str | None:
        """The dead letter this record replays, if it is a replay."""
        return header(self.headers, REPLAY_OF)

    @property
    def replay_source(self) -> tuple[str, int, int] | None:
        """Where the replayed record failed, if this is a replay: (topic, partition, offset)."""
        topic, _, rest = (header(self.headers, REPLAY_SOURCE) or "").rpartition("/")
        topic, _, partition = topic.rpartition("/")
        if not (topic and partition.isdigit() and rest.isdigit()):
            return None
        return topic, int(partition), int(rest)


_current: ContextVar[Delivery | None] = ContextVar("delivery", default=None)


def current_delivery() -> Delivery | None:
    return _current.get()


def set_delivery(delivery: Delivery) -> None:
    """For the stage loop: the record the current task handles."""
    _current.set(delivery)
