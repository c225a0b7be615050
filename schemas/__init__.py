"""Public event contracts of the mesh: Avro schemas, topic names and the codec.

Automations that publish straight to Kafka depend on what is here; see docs/events.md.
"""

from __future__ import annotations

from schemas.codec import Codec, DecodeError, EncodedEvent
from schemas.events import (
    ChatMessage,
    ErrorInfo,
    Event,
    ModelProfile,
    ToolCall,
    ToolRequested,
    TurnAuthorized,
    TurnCompleted,
    TurnContextualized,
    TurnRequested,
    Usage,
)
from schemas.topics import Topic, Topics

__all__ = [
    "ChatMessage",
    "Codec",
    "DecodeError",
    "EncodedEvent",
    "ErrorInfo",
    "Event",
    "ModelProfile",
    "ToolCall",
    "ToolRequested",
    "Topic",
    "Topics",
    "TurnAuthorized",
    "TurnCompleted",
    "TurnContextualized",
    "TurnRequested",
    "Usage",
]
