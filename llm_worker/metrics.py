"""Prometheus metrics of the LLM stage (on its metrics port).

`deployment` is a profile's name, `role/deployment_mode` (adapters/deployments.py), never
its URL: labels are read by whoever reads /metrics, who need not see internal hosts.

The GenAI histograms follow the OpenTelemetry GenAI semantic conventions' metrics, in
Prometheus naming (`gen_ai.client.operation.duration` → `..._seconds`), with their
advised buckets and attributes (`gen_ai_operation_name`, `gen_ai_provider_name`,
`gen_ai_request_model`, `gen_ai_token_type`, `error_type`). One model call is one
observation: a retry or a fallback is a call of its own. The gateway is its clients'
model server too, hence the `server` histograms of time to first token and per output
token, measured here where the stream arrives.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from llm_worker.genai_names import provider_and_model
from schemas.events import ModelProfile, Usage

PROVIDER_FAILURES = Counter(
    "soma_llm_provider_failures_total", "Failed model calls", ["deployment", "status"]
)
FALLBACKS = Counter("soma_llm_fallbacks_total", "Turns answered by a fallback", ["model"])
BREAKER_TRANSITIONS = Counter(
    "soma_llm_breaker_transitions_total", "Circuit breaker transitions", ["deployment", "state"]
)

_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
OPERATION_SECONDS = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Duration of one model call, to its last chunk or its failure",
    [*_GENAI, "error_type"],
    buckets=tuple(0.01 * 2**i for i in range(14)),  # 0.01 .. 81.92 s
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens of one model call, as its provider reported them",
    [*_GENAI, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from a model call's start to its first text or tool call",
    _GENAI,
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Time per output token after the first, of a successful model call",
    _GENAI,
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5),
)
OPERATION = "chat"


def genai_labels(profile: ModelProfile) -> tuple[str, str, str]:
    """(operation, provider, model) of a profile, named as its span names them."""
    return (OPERATION, *provider_and_model(profile.model))


def observe_call(
    profile: ModelProfile,
    *,
    started: float,
    first_token: float | None,
    ended: float,
    usage: Usage | None,
    error_type: str | None = None,
) -> None:
    """Record one model call (perf_counter times); `usage` as its provider reported it."""
    labels = genai_labels(profile)
    OPERATION_SECONDS.labels(*labels, error_type or "").observe(ended - started)
    if first_token is not None:
        TIME_TO_FIRST_TOKEN.labels(*labels).observe(first_token - started)
    if usage is None:
        return
    TOKEN_USAGE.labels(*labels, "input").observe(usage.prompt_tokens)
    TOKEN_USAGE.labels(*labels, "output").observe(usage.completion_tokens)
    if error_type is None and first_token is not None and usage.completion_tokens > 1:
        per_token = (ended - first_token) / (usage.completion_tokens - 1)
        TIME_PER_OUTPUT_TOKEN.labels(*labels).observe(per_token)
