"""The mesh's stages: the one list of them, each a consumer group on one input topic.

A stage's name is its handler's `stage` (the dead-letter index's `STAGE`); its workers
form the consumer group `<namespace>.<stage>` (gateway_runtime/worker.py). The ingress's
`/v1/health` reports each group from this list, and the testbed starts each stage's
service from it (`deploy/services.sh` keeps the same list; a unit test holds them in step).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.topics import Topic, Topics


@dataclass(frozen=True, slots=True)
class Stage:
    name: str  # the handler's `stage`
    service: str  # the process that runs it: `python -m <service>`
    input: str  # the `Topics` field it consumes

    def group(self, namespace: str) -> str:
        return f"{namespace}.{self.name}"

    def input_topic(self, topics: Topics) -> Topic:
        topic: Topic = getattr(topics, self.input)
        return topic


STAGES: tuple[Stage, ...] = (
    Stage("policy", "policy_worker", "requested"),
    Stage("context", "context_worker", "authorized"),
    Stage("llm", "llm_worker", "contextualized"),
    Stage("tools", "tool_dispatcher", "tool_requested"),
    Stage("persistence", "persistence_worker", "completed"),
    Stage("deadletter_index", "deadletter_index", "dead_letter"),
)
