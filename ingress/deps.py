"""Dependencies routes declare: `res: ResourcesDep, principal: PrincipalDep`, and the
authorization ones: `TurnsPrincipal`, `AdminPrincipal`, `SessionReadAccess`, `AdmissionDep`.

They work for HTTP and WebSocket routes alike (they take an `HTTPConnection`). A denial is
an `ingress.auth.errors.Denied` (an HTTPException): 401 with WWW-Authenticate for missing,
bad or revoked credentials, 403 for a missing scope, 404 for a session the caller may not
use, 429 with Retry-After for a rate limit, 503 when authorization cannot be decided.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path
from starlette.requests import HTTPConnection

from gateway_runtime.errors import AuthzUnavailable
from ingress.auth.admission import Admission, session_not_found
from ingress.auth.errors import forbidden, unauthenticated
from ingress.auth.principal import ANONYMOUS, Principal
from ingress.auth.services import authz_unavailable
from ingress.auth.sessions import SESSION_ID_PATTERN
from ingress.resources import Resources

__all__ = [
    "ANONYMOUS",
    "AdminPrincipal",
    "AdmissionDep",
    "OperatorPrincipal",
    "Principal",
    "PrincipalDep",
    "ResourcesDep",
    "SessionReadAccess",
    "TurnsPrincipal",
    "require_scope",
]


# Dependencies are async even when they do not await: FastAPI runs sync ones in a thread
# pool, a thread hop per request on the hot path.
async def get_resources(conn: HTTPConnection) -> Resources:
    resources: Resources = conn.app.state.resources  # set by the lifespan (app.py)
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def bearer_credential(conn: HTTPConnection) -> str | None:
    """`Authorization: Bearer <key or JWT>`, else `X-API-Key`, else (WebSocket only, as
    browsers cannot set headers there) the `access_token` query parameter."""
    authorization = conn.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthenticated("invalid_credentials", "use `Authorization: Bearer <token>`")
        return value.strip()
    api_key = conn.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("access_token")
    return None


async def current_principal(conn: HTTPConnection, res: ResourcesDep) -> Principal:
    """Who is calling. Credentials, when sent, are always checked (a revoked key is 401
    even with auth off); with auth off a caller without any is ANONYMOUS (`turns` only)."""
    credential = bearer_credential(conn)
    if credential is None and not res.settings.gateway_require_auth:
        return ANONYMOUS
    if credential is None:
        raise unauthenticated(
            "missing_credentials", "an API key or bearer token is required (Authorization: Bearer)"
        )
    return await res.auth.authenticate(credential, conn.client.host if conn.client else "")


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def dependency(principal: PrincipalDep) -> Principal:
        if not principal.has(scope):
            raise forbidden("insufficient_scope", f"this needs the {scope!r} scope")
        return principal

    return dependency


TurnsPrincipal = Annotated[Principal, Depends(require_scope("turns"))]
AdminPrincipal = Annotated[Principal, Depends(require_scope("admin"))]
OperatorPrincipal = Annotated[Principal, Depends(require_scope("operator"))]


async def session_read_access(
    session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)],
    res: ResourcesDep,
    principal: TurnsPrincipal,
) -> Principal:
    """The caller, if OpenFGA says it may read the session (`can_read`); else 404."""
    if principal is ANONYMOUS:  # auth off, no credentials: sessions nobody has claimed
        if not await res.auth.anonymous.may_use(session_id):
            raise session_not_found(session_id)
        return principal
    try:
        allowed = await res.auth.sessions.can_read(principal, session_id)
    except AuthzUnavailable as exc:
        raise authz_unavailable(exc) from exc
    if not allowed:
        raise session_not_found(session_id)
    return principal


SessionReadAccess = Annotated[Principal, Depends(session_read_access)]


async def get_admission(res: ResourcesDep, principal: TurnsPrincipal) -> Admission:
    return Admission(principal, res.auth)


AdmissionDep = Annotated[Admission, Depends(get_admission)]
