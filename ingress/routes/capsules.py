"""Capsules: a pass-through to the capsule registry (`CAPSULE_REGISTRY_URL`).

The registry's answer (status, body, content type and disposition) streams to the caller
as it arrives, so a large capsule download costs the ingress a chunk of memory, not the
whole file. The registry learns the caller's tenant from `X-Soma-Tenant`; the caller's
credentials never leave the gateway. Registry unset: 503; unreachable: 502; no answer
within `CAPSULE_REGISTRY_TIMEOUT_S`: 504.

Registry API: `GET {url}/capsules`, `GET {url}/capsules/{id}`,
`POST {url}/capsules/{id}/install`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ingress.auth.errors import Denied, unavailable
from ingress.auth.principal import Principal
from ingress.deps import AdminPrincipal, ResourcesDep, TurnsPrincipal
from ingress.openapi_responses import errors
from ingress.resources import Resources

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/capsules", tags=["capsules"])

CAPSULE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
CapsuleIdPath = Annotated[str, Path(pattern=CAPSULE_ID)]
TENANT_HEADER = "X-Soma-Tenant"
# What of the registry's answer reaches the caller. Hop-by-hop headers, and those that
# would name the registry's own hosts or state (Location, Link, Set-Cookie), stay behind.
PASSED_HEADERS = (
    "content-type",
    "content-disposition",
    "content-length",
    "content-encoding",
    "etag",
    "last-modified",
    "cache-control",
    "retry-after",
)

_PASSED: dict[str, Any] = {"application/json": {}, "application/octet-stream": {}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the registry's answer, passed through", "content": _PASSED},
    # The registry's own statuses reach the caller as it sent them, body and all: a 404
    # of an unknown capsule, a 202 of an install it queued. The gateway's own statuses
    # (below, and those every operation has) take precedence over these ranges.
    "2XX": {"description": "the registry's answer, passed through", "content": _PASSED},
    "4XX": {"description": "the registry's refusal, passed through", "content": _PASSED},
    "5XX": {"description": "the registry's failure, passed through", "content": _PASSED},
    **errors(
        502,
        503,
        504,
        s502="the capsule registry is unreachable (`capsule_registry_unreachable`)",
        s503="no capsule registry is configured (`capsule_registry_unset`), or authorization "
        "cannot be decided now; see Retry-After",
        s504="the registry did not answer in time (`capsule_registry_timeout`)",
    ),
}


class UpstreamResponse(StreamingResponse):
    """The registry's streamed answer; the upstream response is closed however the
    stream ends (done, client gone, registry failing mid-body)."""

    def __init__(self, upstream: httpx.Response) -> None:
        headers = {k: v for k in PASSED_HEADERS if (v := upstream.headers.get(k)) is not None}
        super().__init__(_relay(upstream), status_code=upstream.status_code, headers=headers)
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()


class RegistryStreamBroken(Exception):
    """The registry failed mid-body: the caller's connection is cut, so a partial body is
    never taken for a whole one (the status line has gone already)."""


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("capsule registry failed mid-body: %s", type(exc).__name__)
        raise RegistryStreamBroken(type(exc).__name__) from exc


def _registry(res: Resources) -> httpx.AsyncClient:
    if res.capsule_registry is None:
        raise unavailable(
            "capsule_registry_unset", "no capsule registry is configured (CAPSULE_REGISTRY_URL)"
        )
    return res.capsule_registry


async def _pass_through(
    res: Resources,
    principal: Principal,
    method: str,
    path: str,
    *,
    params: httpx.QueryParams | None = None,
    json: object = None,
    accept: str | None = None,
) -> UpstreamResponse:
    client = _registry(res)
    # Built from scratch: nothing of the caller's (Authorization, a forged tenant) leaks.
    # `identity` keeps the bytes as the registry has them, so Content-Length holds.
    headers = {TENANT_HEADER: principal.tenant, "Accept-Encoding": "identity"}
    if accept:
        headers["Accept"] = accept
    request = client.build_request(method, path, params=params, headers=headers, json=json)
    try:
        upstream = await client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        timeout = res.settings.capsule_registry_timeout_s
        raise Denied(
            504, "capsule_registry_timeout", f"the capsule registry did not answer in {timeout}s"
        ) from exc
    except httpx.HTTPError as exc:
        raise Denied(
            502,
            "capsule_registry_unreachable",
            f"the capsule registry is unreachable ({type(exc).__name__})",
        ) from exc
    return UpstreamResponse(upstream)


@router.get("", response_class=StreamingResponse, responses=RESPONSES)
async def list_capsules(
    request: Request,
    res: ResourcesDep,
    principal: TurnsPrincipal,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> UpstreamResponse:
    """The capsules the registry offers the caller's tenant; every query parameter
    (pagination, filters) is passed to the registry."""
    params = httpx.QueryParams(request.url.query)
    return await _pass_through(
        res, principal, "GET", "capsules", params=params, accept=request.headers.get("accept")
    )


@router.get("/{capsule_id}", response_class=StreamingResponse, responses=RESPONSES)
async def get_capsule(
    capsule_id: CapsuleIdPath, request: Request, res: ResourcesDep, principal: TurnsPrincipal
) -> UpstreamResponse:
    """One capsule: its description, or its bundle (as the registry answers `Accept`)."""
    return await _pass_through(
        res, principal, "GET", f"capsules/{capsule_id}", accept=request.headers.get("accept")
    )


@router.post("/{capsule_id}/install", response_class=StreamingResponse, responses=RESPONSES)
async def install_capsule(
    capsule_id: CapsuleIdPath,
    res: ResourcesDep,
    principal: AdminPrincipal,
    options: Annotated[dict[str, Any] | None, Body()] = None,
) -> UpstreamResponse:
    """Install a capsule for the caller's tenant (tenant admins): `options` go to the
    registry as sent."""
    return await _pass_through(
        res, principal, "POST", f"capsules/{capsule_id}/install", json=options
    )
