"""The port the LLM stage streams through, and its error.

Two adapters implement it: `litellm_model.LiteLLMModel` (any provider LiteLLM knows) and
`openai_http.OpenAIHttpModel` (a lean httpx client for OpenAI-compatible endpoints).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway_runtime.errors import GatewayError
from schemas.events import ChatMessage, ModelProfile, ToolCall, Usage

# Tool definitions in the OpenAI `tools` format (see schemas/tools).
ToolSpecs = Sequence[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    # Whole tool calls, on the answer's last chunk only (adapters join the streamed pieces).
    tool_calls: tuple[ToolCall, ...] = ()


class ProviderError(GatewayError):
    """The model endpoint failed (connect, HTTP error, stream cut); says which and how."""

    def __init__(self, message: str, *, status: int | None = None, mid_stream: bool = False):
        super().__init__(message)
        self.status = status
        self.mid_stream = mid_stream


class ChatModel(Protocol):
    def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        """Yield the answer's chunks as the provider sends them; raise ProviderError.

        With `tools`, the model may answer with tool calls (finish reason `tool_calls`).
        """
        ...
