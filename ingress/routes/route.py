"""`POST /v1/route`: pick the best of several model deployments from live signals.

Signals, all shared by every replica through Redis and Postgres: the deployment's circuit
breaker (open = excluded, half-open = halved), its moving averages of time-to-first-token
and error rate (written by the LLM stage), its cost per 1k tokens (from the model
profile), and the tenant's model allow/deny lists (excluded when denied).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from adapters.deployments import DeploymentState, deployment_name
from gateway_runtime.ports import StoredProfile, Tenant
from ingress.auth.errors import forbidden, unavailable
from ingress.deps import ResourcesDep, TurnsPrincipal
from ingress.openapi_responses import errors

router = APIRouter(tags=["routing"])

WEIGHTS = {"errors": 0.4, "latency": 0.35, "cost": 0.25}
NEUTRAL = 0.5  # the score of a signal with no data yet


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: list[str] = Field(
        min_length=1,
        max_length=20,
        description="model profiles as `role/deployment_mode`, or model names",
    )
    tenant: str | None = Field(None, max_length=128)
    persona: str | None = Field(None, max_length=128)


class CandidateScore(BaseModel):
    candidate: str
    model: str
    score: float
    breaker: str
    ttft_ms: float | None
    error_rate: float
    cost_per_1k_tokens: float | None
    excluded: str | None = None


class RouteOut(BaseModel):
    chosen: str
    score: float
    candidates: list[CandidateScore]


@dataclass(frozen=True, slots=True)
class _Resolved:
    candidate: str
    model: str
    deployment: str | None
    cost: float | None


def _allowed(tenant: Tenant, model: str) -> str | None:
    return None if tenant.model_allowed(model) else f"model not allowed for tenant {tenant.name}"


def score(state: DeploymentState | None, cost: float | None) -> float:
    errors = 1.0 - state.error_rate if state and state.requests else NEUTRAL
    latency = 1.0 / (1.0 + state.ttft_ms / 500.0) if state and state.ttft_ms else NEUTRAL
    price = 1.0 / (1.0 + cost * 10.0) if cost is not None else NEUTRAL
    total = WEIGHTS["errors"] * errors + WEIGHTS["latency"] * latency + WEIGHTS["cost"] * price
    if state and state.breaker == "half_open":
        total /= 2
    return round(total, 4)


def _resolve(candidate: str, profiles: list[StoredProfile]) -> _Resolved:
    role, _, mode = candidate.partition("/")
    for p in profiles:
        if (p.role, p.deployment_mode) == (role, mode) or p.model == candidate:
            profile = p.to_event()
            return _Resolved(candidate, p.model, deployment_name(profile), p.cost_per_1k_tokens)
    return _Resolved(candidate, candidate, None, None)


@router.post(
    "/v1/route",
    response_model=RouteOut,
    responses=errors(
        403,
        503,
        s403="routing for another tenant needs the operator scope",
        s503="every candidate is excluded (`no_candidate`: circuit open or not allowed), or "
        "authorization cannot be decided now; see Retry-After",
    ),
)
async def route(body: RouteIn, res: ResourcesDep, principal: TurnsPrincipal) -> RouteOut:
    if body.tenant not in (None, principal.tenant) and not principal.has("operator"):
        raise forbidden("insufficient_scope", "routing for another tenant needs the operator scope")
    tenant = res.auth.tenants.get(body.tenant or principal.tenant)
    profiles = await res.profiles.list()
    scored = []
    for candidate in body.candidates:
        resolved = _resolve(candidate, profiles)
        state = await res.deployments.state(resolved.deployment) if resolved.deployment else None
        excluded = _allowed(tenant, resolved.model)
        if state and state.breaker == "open":
            excluded = excluded or "circuit open"
        scored.append(
            CandidateScore(
                candidate=candidate,
                model=resolved.model,
                score=0.0 if excluded else score(state, resolved.cost),
                breaker=state.breaker if state else "closed",
                ttft_ms=round(state.ttft_ms, 1) if state and state.ttft_ms else None,
                error_rate=round(state.error_rate, 4) if state else 0.0,
                cost_per_1k_tokens=resolved.cost,
                excluded=excluded,
            )
        )
    eligible = [c for c in scored if c.excluded is None]
    if not eligible:
        raise unavailable(
            "no_candidate",
            "every candidate is excluded: "
            + "; ".join(f"{c.candidate}: {c.excluded}" for c in scored),
        )
    best = max(eligible, key=lambda c: c.score)  # ties keep the caller's order
    return RouteOut(chosen=best.candidate, score=best.score, candidates=scored)
