"""Health of the gateway, each component it depends on, and each stage's consumer group
(ingress/consumer_groups.py): `degraded` while a stage has no live member.

Anyone may ask (load balancers, probes): the answer is then `{"status"}` alone, with the
status code (503 when down). The details (components, their latencies and errors, the
stages' consumer groups and their clients) describe the inside of the mesh, so they are
for a caller with the `operator` scope only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from ingress.deps import ResourcesDep, bearer_credential
from ingress.resources import Resources

router = APIRouter(tags=["health"])


class HealthReport(BaseModel):
    """`status` for anyone; `components` and `stages` for an operator."""

    status: Literal["ok", "degraded", "down"]
    components: dict[str, dict[str, Any]] | None = Field(
        None, description="kafka, postgres, redis, openfga, opa, llm, fanout: status, latency_ms"
    )
    stages: dict[str, dict[str, Any]] | None = Field(
        None, description="each stage's consumer group: status, members"
    )


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": HealthReport, "description": "up (`ok` or `degraded`)"},
    503: {
        "description": "down (a critical component: Kafka, Postgres, Redis), or credentials "
        "sent that cannot be checked now; see Retry-After on the latter",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/HealthReport"},
                        {"$ref": "#/components/schemas/ErrorResponse"},
                    ]
                }
            }
        },
    },
}

# Without these no turn can be accepted or streamed: the gateway is down.
CRITICAL = ("kafka", "postgres", "redis")


async def _kafka(res: Resources) -> None:
    if not await res.publisher.producer.client.force_metadata_update():
        raise ConnectionError("no broker answered a metadata request")


async def _postgres(res: Resources) -> None:
    await res.pool.fetchval("SELECT 1")


async def _redis(res: Resources) -> None:
    await res.redis.ping()


async def _http_ok(res: Resources, url: str) -> None:
    response = await res.http.get(url)
    response.raise_for_status()


async def _check(name: str, probe: Awaitable[None], timeout: float) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, timeout)
        status, error = "ok", None
    except Exception as exc:  # a health probe reports any failure, it never raises
        status, error = "down", f"{type(exc).__name__}: {exc}"[:200]
    latency_ms = round((time.perf_counter() - started) * 1e3, 1)
    result: dict[str, Any] = {"status": status, "latency_ms": latency_ms}
    if error:
        result["error"] = error
    return name, result


async def health_report(res: Resources) -> tuple[int, dict[str, Any]]:
    s = res.settings
    probes = {
        "kafka": _kafka(res),
        "postgres": _postgres(res),
        "redis": _redis(res),
        "openfga": _http_ok(res, s.openfga_api_url.rstrip("/") + "/healthz"),
        "opa": _http_ok(res, s.opa_url.rstrip("/") + "/health"),
        "llm": _http_ok(res, s.local_llm_base_url.rstrip("/") + "/models"),
    }
    checks = asyncio.gather(*(_check(n, p, s.health_timeout_s) for n, p in probes.items()))
    stages_report = res.groups.report(s.health_timeout_s)
    checked, stages = await asyncio.gather(checks, stages_report)
    results = dict(checked)
    results["fanout"] = {
        "status": "ok" if res.hub.connected else "down",
        "clients": res.hub.client_count,
    }
    down = {n for n, r in results.items() if r["status"] != "ok"}
    if down & set(CRITICAL):
        overall = "down"
    elif down or any(stage["status"] != "ok" for stage in stages.values()):
        # A stage nobody consumes holds its turns until a worker is back; new turns are
        # still accepted.
        overall = "degraded"
    else:
        overall = "ok"
    body = {"status": overall, "components": results, "stages": stages}
    return (503 if overall == "down" else 200), body


async def _operator(conn: HTTPConnection, res: Resources) -> bool:
    """Whether the caller may see the details: credentials sent are checked (bad ones are
    401, as everywhere); none is fine, and gets the status alone."""
    credential = bearer_credential(conn)
    if credential is None:
        return False
    client = conn.client.host if conn.client else ""
    return (await res.auth.authenticate(credential, client)).has("operator")


@router.get("/v1/health", response_model=None, responses=RESPONSES)
async def health(request: HTTPConnection, res: ResourcesDep) -> JSONResponse:
    """`{"status"}` for anyone; components and stages too for an operator."""
    operator = await _operator(request, res)
    code, body = await health_report(res)
    if not operator:
        body = {"status": body["status"]}
    return JSONResponse(body, status_code=code)


@router.get("/health", include_in_schema=False)
async def health_alias(request: HTTPConnection, res: ResourcesDep) -> JSONResponse:
    return await health(request, res)
