"""Prometheus metrics of the LLM stage (on its metrics port).

`deployment` is a profile's name, `role/deployment_mode` (adapters/deployments.py), never
its URL: labels are read by whoever reads /metrics, who need not see internal hosts."""

from __future__ import annotations

from prometheus_client import Counter

PROVIDER_FAILURES = Counter(
    "soma_llm_provider_failures_total", "Failed model calls", ["deployment", "status"]
)
FALLBACKS = Counter("soma_llm_fallbacks_total", "Turns answered by a fallback", ["model"])
BREAKER_TRANSITIONS = Counter(
    "soma_llm_breaker_transitions_total", "Circuit breaker transitions", ["deployment", "state"]
)
