from __future__ import annotations

from typing import Literal

from gateway_runtime.settings import StageSettings


class LLMSettings(StageSettings):
    service_name: str = "llm_worker"
    max_in_flight: int = 256
    # auto: the lean httpx client for OpenAI-compatible servers (`openai/<model>` with a
    # base_url), LiteLLM for every other provider; litellm / http force one adapter.
    llm_transport: Literal["auto", "litellm", "http"] = "auto"
    llm_api_key: str = "none"
    llm_timeout_s: float = 60.0
    # Before the first token: tries per deployment beyond the first, and their backoff.
    llm_retries: int = 1
    llm_retry_backoff_s: float = 0.2
    # Circuit breaker per deployment, shared by every llm_worker through Redis.
    breaker_failure_threshold: int = 5
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 30.0
    # Tool rounds a turn may take; after the last one the model is offered no tools and
    # must answer, so a model that keeps calling tools cannot loop a turn forever.
    max_tool_rounds: int = 4
