"""Dependencies routes declare: `res: ResourcesDep, principal: PrincipalDep`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, status
from starlette.requests import HTTPConnection

from ingress.resources import Resources


# Dependencies are async even when they do not await: FastAPI runs sync ones in a thread
# pool, which costs a thread hop per request. HTTPConnection serves HTTP and WebSocket.
async def get_resources(conn: HTTPConnection) -> Resources:
    return conn.app.state.resources  # type: ignore[no-any-return]


ResourcesDep = Annotated[Resources, Depends(get_resources)]


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", "default", frozenset({"admin"}))


async def current_principal(conn: HTTPConnection, res: ResourcesDep) -> Principal:
    """Who is calling. With auth off everyone is the local anonymous admin."""
    if not res.settings.gateway_require_auth:
        return ANONYMOUS
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail={"code": "unauthenticated", "message": "an API key or bearer token is required"},
        headers={"WWW-Authenticate": "Bearer"},
    )


PrincipalDep = Annotated[Principal, Depends(current_principal)]
