"""LiteLLM adapter: any provider LiteLLM reaches, streamed.

LiteLLM is imported here only, in the LLM stage's process (it costs seconds and ~200 MB).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from llm_worker.model import Chunk, ProviderError
from schemas.events import ChatMessage, ModelProfile, Usage

# No internet here: LiteLLM must not fetch its model cost map at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

import litellm

litellm.telemetry = False


class LiteLLMModel:
    def __init__(self, *, api_key: str = "none", timeout_s: float = 60.0) -> None:
        # Retries, fallbacks and cooldowns are the ModelRouter's (shared through Redis),
        # so LiteLLM makes exactly one attempt per call.
        self._api_key = api_key
        self._timeout_s = timeout_s

    async def stream(
        self, profile: ModelProfile, messages: list[ChatMessage]
    ) -> AsyncIterator[Chunk]:
        kwargs: dict[str, Any] = json.loads(profile.kwargs_json or "{}")
        finished = received = False
        try:
            response = await litellm.acompletion(
                model=profile.model,
                api_base=profile.base_url,
                api_key=self._api_key,
                messages=[{"role": m.role, "content": m.content} for m in messages],
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
        except litellm.exceptions.APIError as exc:
            status = getattr(exc, "status_code", None)
            raise ProviderError(
                f"{profile.model}: {exc.message}", status=status, mid_stream=received
            ) from exc
        except Exception as exc:  # LiteLLM raises many unrelated types; translate them all
            raise ProviderError(f"{profile.model}: {exc!r}", mid_stream=received) from exc
        if not finished:
            raise ProviderError(
                f"{profile.model}: stream ended without a finish reason", mid_stream=True
            )
