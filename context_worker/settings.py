from __future__ import annotations

from gateway_runtime.settings import MemorySettings, StageSettings


class ContextSettings(StageSettings, MemorySettings):
    service_name: str = "context_worker"
    # Profiles are looked up in this deployment mode; the default profile of the mode
    # (role `dialogue`) is created from the values below when it does not exist yet.
    deployment_mode: str = "local"
    default_model: str = "openai/smollm2"
    default_model_base_url: str | None = None  # None = the local model's address
    default_max_tokens: int = 256
    default_temperature: float = 0.7
    context_window_tokens: int = 2048
    profile_cache_ttl_s: float = 2.0
