"""Settings from the environment: the only place that reads it.

Every service composes its settings class from `CommonSettings`. Defaults for the local
stack come from `deploy/stack.env`; a variable set in the environment always wins.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

STACK_ENV = Path(__file__).resolve().parent.parent / "deploy" / "stack.env"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=STACK_ENV, extra="ignore")

    service_name: str = "soma"
    # Prefix of topic names and consumer groups (see schemas/topics.py).
    kafka_namespace: str = "soma"
    log_level: str = "INFO"
    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    postgres_dsn: str = "postgresql://soma:soma@127.0.0.1:55432/soma"
    redis_url: str = "redis://127.0.0.1:56379/0"
    openfga_api_url: str = "http://127.0.0.1:18080"
    opa_url: str = "http://127.0.0.1:18181"
    local_llm_base_url: str = "http://127.0.0.1:18088/v1"
    # Fan-out stream retention: how many events a session keeps for Last-Event-ID resume.
    session_stream_maxlen: int = 1000
    session_stream_ttl_s: int = 24 * 3600


class StageSettings(CommonSettings):
    """What every stage worker needs besides the common addresses."""

    metrics_port: int = Field(0, description="0 = no /metrics listener for this worker")
    max_in_flight: int = 64
    retry_attempts: int = 3
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    shutdown_grace_s: float = 20.0
    # How often finished offsets are committed; a crash replays at most this much work.
    commit_interval_s: float = 0.2


class MemorySettings(CommonSettings):
    """Where memories live: a SomaBrain-style service when set, else Postgres."""

    somabrain_url: str | None = None
    memory_recall_limit: int = 3
