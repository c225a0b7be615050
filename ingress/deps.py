"""Dependencies routes declare: `res: ResourcesDep, principal: PrincipalDep`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from ingress.resources import Resources


def get_resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


ResourcesDep = Annotated[Resources, Depends(get_resources)]


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", "default", frozenset({"admin"}))


def current_principal(request: Request, res: ResourcesDep) -> Principal:
    """Who is calling. With auth off everyone is the local anonymous admin."""
    if not res.settings.gateway_require_auth:
        return ANONYMOUS
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail={"code": "unauthenticated", "message": "an API key or bearer token is required"},
        headers={"WWW-Authenticate": "Bearer"},
    )


PrincipalDep = Annotated[Principal, Depends(current_principal)]
