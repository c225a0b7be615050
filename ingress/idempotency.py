"""Idempotency-Key: a client's retry of a turn answers the turn it started, never a new one.

The first request with a key reserves it, with the turn's `{session_id, event_id}` and a
hash of the request, before the turn is published; once the turn is published (or in
the outbox) the key is `accepted`. A retry within IDEMPOTENCY_TTL_S:
- of an accepted key answers the same ids and publishes nothing;
- of a key still `reserved` (the first attempt failed, or is still under way) publishes
  the same turn again, with the same event_id: the policy stage admits an event_id once;
- with another request body is refused (422): a key names one request.
Keys belong to the caller (its principal), so two callers' keys never meet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Literal

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.postgres import PG_ERRORS

log = logging.getLogger(__name__)
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, like the IETF draft's
FORGET_EVERY = 1000  # keys reserved between two clean-ups of expired ones, per process


@dataclass(frozen=True, slots=True)
class Remembered:
    session_id: str
    event_id: str
    request_hash: str
    state: Literal["reserved", "accepted"]


def request_hash(kind: str, body: str) -> str:
    return hashlib.sha256(f"{kind}\n{body}".encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, pool: asyncpg.Pool, ttl_s: int) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._reserved = 0
        self._cleanup: asyncio.Task[None] | None = None

    async def find(self, principal: str, key: str) -> Remembered | None:
        """The key's turn, if the key was used within the TTL."""
        try:
            row = await self._pool.fetchrow(
                "SELECT session_id, event_id, request_hash, state FROM idempotency_keys"
                " WHERE principal = $1 AND key = $2"
                " AND created_at > now() - make_interval(secs => $3)",
                principal,
                key,
                self._ttl_s,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"idempotency keys unavailable: {exc!r}") from exc
        return None if row is None else Remembered(**dict(row))

    async def reserve(self, principal: str, key: str, new: Remembered) -> Remembered:
        """Remember `new` under the key; the one remembered first if a concurrent request
        (or an expired use) got there before."""
        self._reserved += 1
        if self._reserved % FORGET_EVERY == 1 and self._cleanup is None:
            # Off the request: it must answer within its deadline, a clean-up need not.
            self._cleanup = asyncio.create_task(self._forget_quietly())
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO idempotency_keys"
                " (principal, key, request_hash, session_id, event_id, state)"
                " VALUES ($1, $2, $3, $4, $5, 'reserved')"
                " ON CONFLICT (principal, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
                " session_id = EXCLUDED.session_id, event_id = EXCLUDED.event_id,"
                " state = 'reserved', created_at = now()"
                " WHERE idempotency_keys.created_at <= now() - make_interval(secs => $6)"
                " RETURNING session_id, event_id, request_hash, state",
                principal,
                key,
                new.request_hash,
                new.session_id,
                new.event_id,
                self._ttl_s,
            )
            if row is None:
                row = await self._pool.fetchrow(
                    "SELECT session_id, event_id, request_hash, state FROM idempotency_keys"
                    " WHERE principal = $1 AND key = $2",
                    principal,
                    key,
                )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"idempotency keys unavailable: {exc!r}") from exc
        return new if row is None else Remembered(**dict(row))

    async def accept(self, principal: str, key: str) -> None:
        try:
            await self._pool.execute(
                "UPDATE idempotency_keys SET state = 'accepted' WHERE principal = $1 AND key = $2",
                principal,
                key,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"idempotency keys unavailable: {exc!r}") from exc

    async def _forget_quietly(self) -> None:
        try:
            forgotten = await self.forget_expired()
            log.info("forgot %d expired idempotency keys", forgotten)
        except DependencyUnavailable as exc:
            log.warning("expired idempotency keys not cleaned up: %r", exc)
        finally:
            self._cleanup = None

    async def forget_expired(self) -> int:
        try:
            done = await self._pool.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
                self._ttl_s,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"idempotency keys unavailable: {exc!r}") from exc
        return int(done.split()[-1])
