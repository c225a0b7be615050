"""Which sessions the anonymous caller may use (GATEWAY_REQUIRE_AUTH=false).

Anonymous turns claim no session, so the sessions they start have no owner. A session a
key or token claimed has one (`sessions.owner`, adapters/session_claims.py) and belongs
to that principal's tenant: the anonymous caller may neither read nor post to it, so
with auth off nobody reads a keyed client's session without its credentials. The answer
is 404 `session_not_found`, as for anyone else's session. A claim is never undone, so a
claimed session is remembered; an unclaimed one is asked again (it may be claimed since).

While Postgres cannot answer (within WAIT_S; unreachable, it is not asked again for
SKIP_S, while a slow answer under load is only that request's) who owns a named session
cannot be known, so reading it or posting to it fails closed: 503
`session_store_unavailable` with Retry-After (as anything else would leak a keyed
client's session for as long as Postgres is slow). A turn without a session id starts a
new session nobody can own yet, so the local profile still accepts turns whatever
Postgres does (ingress/auth/admission.py does not ask then). Sessions remembered as
claimed are refused (404) without asking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import asyncpg

from gateway_runtime.postgres import PG_ERRORS
from ingress.auth.errors import Denied, unavailable

log = logging.getLogger(__name__)

WAIT_S = 2.0  # the ingress's answer deadline for a turn (TURN_ACCEPT_DEADLINE_S)
SKIP_S = 1.0
RETRY_AFTER_S = 2.0


class AnonymousSessions:
    def __init__(self, pool: asyncpg.Pool, *, max_cached: int = 50_000) -> None:
        self._pool = pool
        self._claimed: OrderedDict[str, None] = OrderedDict()
        self._max_cached = max_cached
        self._skip_until = 0.0

    async def may_use(self, session_id: str) -> bool:
        """True when no key or token has claimed the session; `Denied` (503) when that
        cannot be known now."""
        if session_id in self._claimed:
            return False
        if time.monotonic() < self._skip_until:
            raise _store_unavailable()
        try:
            async with asyncio.timeout(WAIT_S):
                owned = await self._pool.fetchval(
                    "SELECT owner IS NOT NULL FROM sessions WHERE session_id = $1", session_id
                )
        except TimeoutError as exc:  # slow (a busy pool): this request only
            log.warning("session owner not known within %.1fs; refused", WAIT_S)
            raise _store_unavailable() from exc
        except PG_ERRORS as exc:
            self._skip_until = time.monotonic() + SKIP_S
            log.warning("session owners unknown (Postgres: %r); named sessions refused", exc)
            raise _store_unavailable() from exc
        if not owned:
            return True
        self._claimed[session_id] = None
        if len(self._claimed) > self._max_cached:
            self._claimed.popitem(last=False)
        return False


def _store_unavailable() -> Denied:
    return unavailable(
        "session_store_unavailable",
        "whose session this is cannot be checked now (Postgres is not answering); retry"
        " after Retry-After seconds, or post without session_id to start a new session",
        RETRY_AFTER_S,
    )
