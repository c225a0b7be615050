from __future__ import annotations

from gateway_runtime.settings import StageSettings


class ContextSettings(StageSettings):
    service_name: str = "context_worker"
    # The default model profile (model profiles in Postgres override it per role).
    default_model: str = "openai/smollm2"
    default_model_base_url: str | None = None  # None = the local model's address
    default_max_tokens: int = 256
    default_temperature: float = 0.7
    context_window_tokens: int = 2048
