"""Ingress metrics read at scrape time: model deployments, stage consumer groups, budgets.

What these show is shared state, read when Prometheus scrapes, so any ingress replica
shows the same picture (aggregate with `max`, not `sum`):
- the breaker state and moving averages of each model deployment live in Redis (written
  by the LLM stage). A deployment is labelled with its profile's name
  (`role/deployment_mode`), never a URL; state kept under the URL-bearing names of earlier
  versions (until it expires, a day) is not shown;
- each stage's consumer lag and members are Kafka's view of its group, the inspection
  `/v1/health` makes (ingress/consumer_groups.py; one serves both for
  HEALTH_STAGES_CACHE_S). A stage whose group could not be inspected has no sample, rather
  than a stale one;
- today's (UTC) budget of every budgeted persona of every configured tenant: its limit and
  the tokens settled and held in the Postgres ledger (adapters/budgets.py). Tenants and
  personas come from the tenants file, so the label set is bounded by configuration.
A dependency that is down leaves its gauges as they were and never fails the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Gauge

from adapters.budgets import PostgresBudgetLedger
from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import DEFAULT_PERSONA, BudgetUsage
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
CONSUMER_LAG = Gauge(
    "soma_stage_consumer_lag",
    "Records of the stage's input topic its consumer group has not committed yet",
    ["stage"],
)
CONSUMER_MEMBERS = Gauge(
    "soma_stage_consumer_members", "Members of the stage's consumer group", ["stage"]
)
CONSUMER_LIVE = Gauge(
    "soma_stage_consumer_live", "1 when the stage's group is Stable with a member", ["stage"]
)
BUDGET_LIMIT = Gauge(
    "soma_budget_limit_tokens", "Daily token budget of a tenant's persona", ["tenant", "persona"]
)
BUDGET_TOKENS = Gauge(
    "soma_budget_tokens",
    "Today's (UTC) tokens of a budget: settled (used) and held by turns in flight (reserved)",
    ["tenant", "persona", "state"],
)


async def refresh_gauges(res: Resources) -> None:
    """Bring every scrape-time gauge up to date (each source at once, none can fail)."""
    SSE_CLIENTS.set(res.hub.client_count)
    await asyncio.gather(
        refresh_deployment_gauges(res), refresh_stage_gauges(res), refresh_budget_gauges(res)
    )


async def refresh_deployment_gauges(res: Resources) -> None:
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


async def refresh_stage_gauges(res: Resources) -> None:
    report = await res.groups.report(res.settings.health_timeout_s)
    for stage, view in report.items():
        if "lag" not in view:  # not inspected: no sample rather than an old one
            for gauge in (CONSUMER_LAG, CONSUMER_MEMBERS, CONSUMER_LIVE):
                with contextlib.suppress(KeyError):
                    gauge.remove(stage)
            continue
        CONSUMER_LAG.labels(stage).set(view["lag"])
        CONSUMER_MEMBERS.labels(stage).set(view["members"])
        CONSUMER_LIVE.labels(stage).set(1 if view["status"] == "ok" else 0)


async def refresh_budget_gauges(res: Resources) -> None:
    tenants = res.auth.tenants
    budgeted = {
        (name, persona): limit
        for name in tenants.names()
        for tenant in (tenants.get(name),)
        for persona in sorted({DEFAULT_PERSONA, *tenant.personas})
        if (limit := tenant.budget_for(persona)) > 0
    }
    try:
        spent = await PostgresBudgetLedger(res.pool).today() if budgeted else {}
    except DependencyUnavailable:
        return
    BUDGET_LIMIT.clear()
    BUDGET_TOKENS.clear()
    for (tenant, persona), limit in budgeted.items():
        usage = spent.get((tenant, persona), BudgetUsage(0, 0, 0))
        BUDGET_LIMIT.labels(tenant, persona).set(limit)
        BUDGET_TOKENS.labels(tenant, persona, "used").set(usage.used)
        BUDGET_TOKENS.labels(tenant, persona, "reserved").set(usage.reserved)
