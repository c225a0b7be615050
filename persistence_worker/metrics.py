"""The persistence stage's metrics: the end of a turn's way through the mesh.

Counted once per turn, when its rows are first stored (a redelivery adds nothing):
- `soma_turn_duration_seconds`: from the ingress accepting the turn (`created_at_ms`) to
  its storage, by outcome; the whole turn as the mesh sees it, tool rounds included;
- `soma_tenant_tokens_total`: the tokens each tenant's turns used (input and output), for
  every tenant, budgeted or not (the ingress shows the budgets themselves).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from schemas.events import TurnCompleted

TURN_SECONDS = Histogram(
    "soma_turn_duration_seconds",
    "Time from a turn's acceptance by the ingress to its storage",
    ["status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
)
TENANT_TOKENS = Counter(
    "soma_tenant_tokens_total", "Tokens used by a tenant's stored turns", ["tenant", "token_type"]
)


def observe_stored(turn: TurnCompleted) -> None:
    seconds = max(0.0, time.time() - turn.request.created_at_ms / 1000)
    TURN_SECONDS.labels(turn.status).observe(seconds)
    tenant = turn.request.tenant
    TENANT_TOKENS.labels(tenant, "input").inc(turn.usage.prompt_tokens)
    TENANT_TOKENS.labels(tenant, "output").inc(turn.usage.completion_tokens)
