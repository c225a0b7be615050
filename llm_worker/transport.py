"""Chooses the adapter for each call: the lean client where it is equivalent, else LiteLLM.

With `LLM_TRANSPORT=auto` (the default) a profile whose model is `openai/<name>` and that
names a `base_url` — an OpenAI-compatible server such as the local model, vLLM or a
proxy — is called with the lean aiohttp client; every other provider goes through LiteLLM.
`litellm` and `http` force one adapter for every call. docs/benchmarks.md has what each
costs per turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway_runtime.ports import ChatModel, Chunk, ToolSpecs
from schemas.events import ChatMessage, ModelProfile


def openai_compatible(profile: ModelProfile) -> bool:
    return profile.model.startswith("openai/") and bool(profile.base_url)


class AutoModel:
    """The `ChatModel` port that picks the lean client or LiteLLM per profile."""

    def __init__(self, lean: ChatModel, litellm: ChatModel) -> None:
        self._lean = lean
        self._litellm = litellm

    def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        adapter = self._lean if openai_compatible(profile) else self._litellm
        return adapter.stream(profile, messages, tools)
