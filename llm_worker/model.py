"""The port the LLM stage streams through, and its error.

Two adapters implement it: `litellm_model.LiteLLMModel` (any provider LiteLLM knows) and
`openai_http.OpenAIHttpModel` (a lean httpx client for OpenAI-compatible endpoints).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from gateway_runtime.errors import GatewayError
from schemas.events import ChatMessage, ModelProfile, Usage


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None


class ProviderError(GatewayError):
    """The model endpoint failed (connect, HTTP error, stream cut); says which and how."""

    def __init__(self, message: str, *, status: int | None = None, mid_stream: bool = False):
        super().__init__(message)
        self.status = status
        self.mid_stream = mid_stream


class ChatModel(Protocol):
    def stream(self, profile: ModelProfile, messages: list[ChatMessage]) -> AsyncIterator[Chunk]:
        """Yield the answer's chunks as the provider sends them; raise ProviderError."""
        ...
