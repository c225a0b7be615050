"""LiteLLM adapter: any provider LiteLLM reaches, streamed.

LiteLLM is imported by `load_litellm` at the LLM stage's start-up, in that process only
(it costs seconds and ~200 MB), never as a side effect of importing this module.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from gateway_runtime.errors import ProviderError
from gateway_runtime.ports import Chunk, ToolSpecs
from gateway_runtime.settings import LLMSettings
from llm_worker.wire import ToolCallAccumulator, wire_messages
from schemas.events import ChatMessage, ModelProfile, Usage


def load_litellm(settings: LLMSettings) -> ModuleType:
    """LiteLLM, imported for this machine. It reads its switches from the environment as
    it is imported, so they are exported from the settings just before: with the
    defaults it never fetches its model cost map from the internet."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = settings.litellm_local_model_cost_map
    os.environ["LITELLM_OFFLINE_MODE"] = settings.litellm_offline_mode
    litellm: Any = importlib.import_module("litellm")
    litellm.telemetry = False
    litellm.suppress_debug_info = True  # no "Give Feedback" banners on stdout
    module: ModuleType = litellm
    return module


class LiteLLMModel:
    """The `ChatModel` port over `litellm.acompletion`."""

    def __init__(
        self, litellm: ModuleType, *, api_key: str = "none", timeout_s: float = 60.0
    ) -> None:
        # Retries, fallbacks and cooldowns are the ModelRouter's (shared through Redis),
        # so LiteLLM makes exactly one attempt per call.
        self._litellm = litellm
        self._api_key = api_key
        self._timeout_s = timeout_s

    async def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        kwargs: dict[str, Any] = json.loads(profile.kwargs_json or "{}")
        if tools:
            # A copy: LiteLLM rewrites tool schemas in place for some providers, and the
            # offer is shared by every turn.
            kwargs["tools"] = copy.deepcopy(list(tools))
        calls = ToolCallAccumulator()
        finished = received = False
        try:
            response = await self._litellm.acompletion(
                model=profile.model,
                api_base=profile.base_url,
                api_key=self._api_key,
                messages=wire_messages(messages),
                temperature=profile.temperature,
                max_tokens=profile.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                num_retries=0,
                timeout=self._timeout_s,
                **kwargs,
            )
            async for part in response:
                text, finish = "", None
                for choice in part.choices or ():
                    text += getattr(choice.delta, "content", None) or ""
                    deltas = getattr(choice.delta, "tool_calls", None) or ()
                    for position, call in enumerate(deltas):
                        _add_call(calls, position, call)
                    finish = choice.finish_reason or finish
                usage = getattr(part, "usage", None)
                finished = finished or bool(finish)
                received = received or bool(text)
                yield Chunk(
                    text=text,
                    finish_reason=finish,
                    usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
                    if usage
                    else None,
                )
        except Exception as exc:  # LiteLLM raises many unrelated types; translate them all
            # Its provider errors (RateLimitError, InternalServerError, ...) carry the
            # upstream's HTTP status; the router's retry policy depends on it.
            status = getattr(exc, "status_code", None)
            message = getattr(exc, "message", None) or repr(exc)
            raise ProviderError(
                f"{profile.model}: {message}",
                status=status if isinstance(status, int) else None,
                mid_stream=received,
            ) from exc
        if not finished:
            raise ProviderError(
                f"{profile.model}: stream ended without a finish reason", mid_stream=True
            )
        if whole := calls.calls():
            yield Chunk(tool_calls=whole)


def _add_call(calls: ToolCallAccumulator, position: int, call: Any) -> None:
    """One streamed tool-call delta; LiteLLM gives objects (sometimes dicts) for them."""
    if isinstance(call, dict):
        calls.add_openai([{"index": position, **call}])
        return
    function = getattr(call, "function", None)
    index = getattr(call, "index", None)
    calls.add(
        position if index is None else int(index),
        getattr(call, "id", None),
        getattr(function, "name", None),
        getattr(function, "arguments", None),
    )
