"""Who a session belongs to, and who may read it, for the ingress's callers.

The claim itself (the session's row in Postgres; OpenFGA decides with the row's tenant and
owner as contextual tuples) is adapters/session_claims.py, shared with the policy stage.
A session of another tenant is answered as if it did not exist (404), so its existence
does not leak. Reading (SSE, WebSocket) needs `can_read`,
decided on every connect (its owner's without an OpenFGA round trip while OpenFGA answers).
"""

from __future__ import annotations

from adapters.session_claims import SessionClaims, SessionOfAnotherTenant
from ingress.auth.principal import Principal

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

__all__ = ["SESSION_ID_PATTERN", "MayNotWrite", "SessionAccess", "SessionOfAnotherTenant"]


class MayNotWrite(Exception):
    """The session is the caller's tenant's, but OpenFGA says the caller may not write it."""


class SessionAccess:
    """The session claims, asked for an authenticated principal."""

    def __init__(self, claims: SessionClaims) -> None:
        self.claims = claims

    async def claim(self, principal: Principal, session_id: str, persona_id: str | None) -> None:
        """Make sure the session exists and is the caller's tenant's, and that the caller
        may write it; claim it if new. Its owner (most turns) is not asked OpenFGA: anyone
        else is, so a poster who may not write is told now (403), not left waiting."""
        owner = await self.claims.claim(principal.subject, principal.tenant, session_id, persona_id)
        if owner != principal.subject and not await self.claims.can_write(
            principal.subject, session_id
        ):
            raise MayNotWrite(session_id)

    async def can_read(self, principal: Principal, session_id: str) -> bool:
        return await self.claims.can_read(principal.subject, session_id)
