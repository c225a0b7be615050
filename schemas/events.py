"""Typed views of the Avro records: what handlers take and return.

Field names and defaults mirror the `.avsc` files under `schemas/avro/`; the codec turns
these into Avro and back. Each event class names its schema and the version it writes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """Avro `ChatMessageV2` (TurnContextualized v3); `ChatMessage` data reads into it."""

    role: str
    content: str
    tool_call_id: str | None = None
    tool_calls_json: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ModelProfile:
    model: str
    role: str = "dialogue"
    deployment_mode: str = "local"
    base_url: str | None = None
    api_path: str | None = None
    temperature: float = 0.7
    max_tokens: int = 256
    kwargs_json: str = "{}"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str
    retryable: bool = False
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class TurnRequested:
    SCHEMA: ClassVar[str] = "soma.events.TurnRequested"
    VERSION: ClassVar[int] = 3

    event_id: str
    session_id: str
    message: str
    created_at_ms: int
    tenant: str = "default"
    persona_id: str | None = None
    attachments: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    principal: str | None = None
    action: str | None = None
    api: str | None = None  # None: the session API; "chat.completions" | "responses"
    messages: list[ChatMessage] = field(default_factory=list)  # the OpenAI API's conversation
    generation_json: str | None = None  # OpenAI generation parameters (JSON object)
    after_turn_id: str | None = None  # the turn whose exchange this one continues

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> TurnRequested:
        messages = [ChatMessage(**m) for m in d.get("messages", ())]
        return cls(**{**d, "messages": messages})

    @property
    def generation(self) -> dict[str, Any]:
        """The OpenAI generation parameters ({} for a session API turn)."""
        if not self.generation_json:
            return {}
        value = json.loads(self.generation_json)
        return value if isinstance(value, dict) else {}

    @property
    def client_tools(self) -> bool:
        """The client offers its own tools: their calls go back to it, not to the mesh."""
        return bool(self.generation.get("tools"))


@dataclass(frozen=True, slots=True)
class TurnAuthorized:
    SCHEMA: ClassVar[str] = "soma.events.TurnAuthorized"
    VERSION: ClassVar[int] = 3

    request: TurnRequested
    principal: str
    authorized_at_ms: int
    reserved_tokens: int = 0
    max_output_tokens: int = 0  # the cap of every model call of the turn (0 = not set)

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> TurnAuthorized:
        return cls(**{**d, "request": TurnRequested.from_avro(d["request"])})


@dataclass(frozen=True, slots=True)
class TurnContextualized:
    SCHEMA: ClassVar[str] = "soma.events.TurnContextualized"
    VERSION: ClassVar[int] = 4

    request: TurnRequested
    principal: str
    messages: list[ChatMessage]
    profile: ModelProfile
    reserved_tokens: int = 0
    fallbacks: list[ModelProfile] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    tool_rounds: int = 0
    prior_usage: Usage | None = None

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> TurnContextualized:
        return cls(
            request=TurnRequested.from_avro(d["request"]),
            principal=d["principal"],
            messages=[ChatMessage(**m) for m in d["messages"]],
            profile=ModelProfile(**d["profile"]),
            reserved_tokens=d["reserved_tokens"],
            fallbacks=[ModelProfile(**p) for p in d["fallbacks"]],
            memories=d["memories"],
            tool_rounds=d["tool_rounds"],
            prior_usage=Usage(**d["prior_usage"]) if d["prior_usage"] else None,
        )


@dataclass(frozen=True, slots=True)
class ToolRequested:
    SCHEMA: ClassVar[str] = "soma.events.ToolRequested"
    VERSION: ClassVar[int] = 2

    turn: TurnContextualized
    calls: list[ToolCall]
    usage: Usage
    requested_at_ms: int
    text: str = ""
    model: str = ""

    @property
    def request(self) -> TurnRequested:
        """The turn's request: what the codec keys and labels the record by."""
        return self.turn.request

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> ToolRequested:
        return cls(
            turn=TurnContextualized.from_avro(d["turn"]),
            calls=[ToolCall(**c) for c in d["calls"]],
            usage=Usage(**d["usage"]),
            requested_at_ms=d["requested_at_ms"],
            text=d["text"],
            model=d["model"],
        )


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    SCHEMA: ClassVar[str] = "soma.events.TurnCompleted"
    VERSION: ClassVar[int] = 2

    request: TurnRequested
    principal: str
    status: str
    completed_at_ms: int
    usage: Usage
    answer: str = ""
    model: str = ""
    reserved_tokens: int = 0
    error: ErrorInfo | None = None

    @classmethod
    def from_avro(cls, d: dict[str, Any]) -> TurnCompleted:
        return cls(
            **{
                **d,
                "request": TurnRequested.from_avro(d["request"]),
                "usage": Usage(**d["usage"]),
                "error": ErrorInfo(**d["error"]) if d["error"] else None,
            }
        )


Event = TurnRequested | TurnAuthorized | TurnContextualized | TurnCompleted | ToolRequested

EVENT_TYPES: dict[str, type[Event]] = {
    cls.SCHEMA: cls
    for cls in (TurnRequested, TurnAuthorized, TurnContextualized, TurnCompleted, ToolRequested)
}


def request_of(event: Event) -> TurnRequested:
    """The turn request an event belongs to: what it is keyed and labelled by."""
    return event if isinstance(event, TurnRequested) else event.request


def to_avro(event: Event) -> dict[str, Any]:
    """The record as fastavro writes it (nested dataclasses become dicts)."""
    return dataclasses.asdict(event)
