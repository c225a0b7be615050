from __future__ import annotations

from typing import Literal

from gateway_runtime.settings import StageSettings


class LLMSettings(StageSettings):
    service_name: str = "llm_worker"
    max_in_flight: int = 256
    # litellm: every call through LiteLLM; http: the lean httpx client for
    # OpenAI-compatible endpoints (see docs/benchmarks.md for what each costs).
    llm_transport: Literal["litellm", "http"] = "litellm"
    llm_api_key: str = "none"
    llm_timeout_s: float = 60.0
