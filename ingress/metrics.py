"""Ingress metrics, including the shared state of every model deployment.

The breaker state and moving averages live in Redis (written by the LLM stage); they are
read at scrape time, so any ingress replica shows the same picture. A deployment is
labelled with its profile's name (`role/deployment_mode`), never a URL; state kept under
the URL-bearing names of earlier versions (until it expires, a day) is not shown.
"""

from __future__ import annotations

from prometheus_client import Gauge

from gateway_runtime.errors import DependencyUnavailable
from ingress.resources import Resources

BREAKER_STATES = ("closed", "half_open", "open")
BREAKER = Gauge(
    "soma_llm_breaker_state",
    "1 for the deployment's current circuit breaker state",
    ["deployment", "state"],
)
TTFT = Gauge("soma_llm_ttft_ms_avg", "Moving average of time to first token", ["deployment"])
ERROR_RATE = Gauge("soma_llm_error_rate_avg", "Moving average of failed calls", ["deployment"])
REQUESTS = Gauge("soma_llm_requests", "Model calls recorded", ["deployment"])
SSE_CLIENTS = Gauge("soma_ingress_stream_clients", "SSE/WS clients on this process")


async def refresh_deployment_gauges(res: Resources) -> None:
    SSE_CLIENTS.set(res.hub.client_count)
    try:
        states = await res.deployments.all_states()
    except DependencyUnavailable:
        return
    for state in states:
        if "://" in state.name:
            continue
        for name in BREAKER_STATES:
            BREAKER.labels(state.name, name).set(1 if state.breaker == name else 0)
        if state.ttft_ms is not None:
            TTFT.labels(state.name).set(state.ttft_ms)
        ERROR_RATE.labels(state.name).set(state.error_rate)
        REQUESTS.labels(state.name).set(state.requests)
