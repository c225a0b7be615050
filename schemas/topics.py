"""Topic names and partition counts: the one list the provisioning code creates.

Names are `<namespace>.<suffix>`; the namespace is `soma` unless KAFKA_NAMESPACE says
otherwise (tests run a whole mesh in a namespace of their own beside a running one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    doc: str


@dataclass(frozen=True, slots=True)
class Topics:
    requested: Topic
    authorized: Topic
    contextualized: Topic
    completed: Topic
    tool_requested: Topic
    dead_letter: Topic

    @classmethod
    def for_namespace(cls, namespace: str = "soma") -> Topics:
        return cls(
            requested=Topic(
                f"{namespace}.turn.requested", 12, "TurnRequested, from the ingress or automations"
            ),
            authorized=Topic(
                f"{namespace}.turn.authorized", 12, "TurnAuthorized, policy -> context"
            ),
            contextualized=Topic(
                f"{namespace}.turn.contextualized", 12, "TurnContextualized, context -> llm"
            ),
            completed=Topic(f"{namespace}.turn.completed", 12, "TurnCompleted, llm -> persistence"),
            tool_requested=Topic(
                f"{namespace}.tool.requested",
                12,
                "ToolRequested, llm -> tool_dispatcher (which answers on contextualized)",
            ),
            dead_letter=Topic(
                f"{namespace}.deadletter", 4, "events a stage gave up on, with provenance headers"
            ),
        )

    def all(self) -> list[Topic]:
        return [getattr(self, f.name) for f in fields(self)]

    def is_inbound(self, topic: str) -> bool:
        """An automation's inbound topic of this namespace (outsiders write these)."""
        namespace = self.requested.name.removesuffix(".turn.requested")
        return topic.startswith(f"{namespace}.inbound.")

    def turn_sources(self) -> str:
        """The policy stage's input, as a regex: the requests topic and every automation's
        inbound topic (a new automation's topic is picked up without a restart)."""
        namespace = re.escape(self.requested.name.removesuffix(".turn.requested"))
        return rf"^{namespace}\.(turn\.requested|inbound\.[a-z0-9][a-z0-9-]*)$"


INBOUND_PARTITIONS = 12  # like the requests topic: an automation's turns spread as far


def inbound_topic(namespace: str, automation: str) -> str:
    """The one topic automation `automation` may write (its credentials allow no other)."""
    return f"{namespace}.inbound.{automation}"
