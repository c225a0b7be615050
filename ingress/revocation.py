"""Revoking an API key, so that it bites at once, everywhere, and stays bitten.

Postgres is the truth: one statement marks the key revoked and records its clean-up as
pending (`key_revocations`). Then, in this order:
1. this replica ends the key's open streams (ingress/streams.py);
2. Redis: the key's cached copy is replaced by a revoked one (every replica refuses the
   key from its next request) and the key id is published on the revocation channel,
   which every replica's hub listens to, ending the key's streams there within
   milliseconds;
3. OpenFGA: every relation naming the key is removed (its tenant roles, the sessions it
   owns, any it was given).
A step that fails (Redis or OpenFGA down or hung) leaves the clean-up pending: every
replica retries due clean-ups in the background, with backoff, until one pass succeeds.
The key is refused meanwhile all the same: a replica that cannot reach Redis reads the
key from Postgres.

Missing the channel's message (Redis down at the revocation, or a hub reconnecting)
does not leave a stream open: every KEY_REVOCATION_CHECK_S each replica asks Postgres
which keys holding its streams are revoked (one query, only while key streams are open).

A request authenticated just before the revocation may still be claiming a session, and
so writing a relation naming the key, for up to its accept deadline: a clean-up is done
only after a pass that started SETTLE later than the revocation, so one more pass runs
then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from adapters import openfga
from adapters.openfga import FgaAuthorizer
from gateway_runtime.background import background
from gateway_runtime.errors import DependencyUnavailable, PermanentError
from gateway_runtime.postgres import PG_ERRORS
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import IngressSettings
from ingress.auth.keys import KeyRecord, KeyStore, subject_of
from ingress.streams import OpenStreams

log = logging.getLogger(__name__)

KEY_ID = re.compile(r"[0-9a-f]{16}")
CLAIM_S = 10.0  # a pass in progress holds its row this long against other replicas
RETRY_MIN_S = 1.0
RETRY_MAX_S = 5.0  # short: a retry also repairs the Redis cache once Redis is back
BUG_BACKOFF_MAX_S = 30.0  # the background check, after errors that are no outage
BATCH = 20

_REVOKE = """
WITH revoked AS (
    UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1
    RETURNING key_id, tenant, label, scopes, prefix, created_at, created_by, last_used_at,
              revoked_at, secret_sha256
), pending AS (
    INSERT INTO key_revocations (key_id, revoked_at, due_at)
    SELECT key_id, revoked_at, now() + make_interval(secs => $2) FROM revoked
    ON CONFLICT (key_id) DO UPDATE SET done_at = NULL, due_at = excluded.due_at
)
SELECT *, now() AS started FROM revoked
"""
_CLAIM_DUE = """
UPDATE key_revocations r
SET due_at = now() + make_interval(secs => $1), attempts = r.attempts + 1
FROM api_keys k
WHERE k.key_id = r.key_id AND r.key_id IN (
    SELECT key_id FROM key_revocations WHERE done_at IS NULL AND due_at <= now()
    ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING r.key_id, k.tenant, k.scopes, k.secret_sha256, now() AS started
"""
# A failed pass is due again after a backoff; a successful one is done if it started
# SETTLE after the revocation, else due once more then.
_FINISH = """
UPDATE key_revocations SET
    last_error = $3,
    done_at = CASE WHEN $3::text IS NULL AND $2 >= revoked_at + make_interval(secs => $4)
                   THEN now() END,
    due_at = CASE WHEN $3::text IS NULL THEN revoked_at + make_interval(secs => $4)
                  ELSE now() + make_interval(secs => least($5 * 2 ^ least(attempts, 8), $6)) END
WHERE key_id = $1
"""
_REVOKED_AMONG = (
    "SELECT key_id FROM api_keys WHERE key_id = ANY($1::text[]) AND revoked_at IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class Revoked:
    record: KeyRecord
    # The Redis or OpenFGA part failed; it is retried in the background.
    cleanup_pending: bool


class KeyRevocations:
    """Revokes keys and finishes their clean-up; one per ingress process."""

    def __init__(
        self,
        settings: IngressSettings,
        *,
        pool: asyncpg.Pool,
        redis: Redis,
        keys: RedisKeys,
        key_store: KeyStore,
        authorizer: FgaAuthorizer,
        streams: OpenStreams,
        gate: RedisGate | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._keys = keys
        self._key_store = key_store
        self._authorizer = authorizer
        self._streams = streams
        self._gate = gate or RedisGate.of(redis)
        self._wait_s = settings.redis_request_timeout_s
        self._check_s = settings.key_revocation_check_s
        self._settle_s = settings.turn_accept_deadline_s + settings.openfga_timeout_s + 1.0

    async def revoke(self, key_id: str) -> Revoked | None:
        """Revoke the key and clean up after it; None if there is no such key."""
        try:
            row = await self._pool.fetchrow(_REVOKE, key_id, CLAIM_S)
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"key store unavailable: {exc!r}"[:300]) from exc
        if row is None:
            return None
        self._streams.close_key(key_id)
        error = await self._clean_up(row)
        await self._finish(key_id, row["started"], error)
        values = {f.name: row[f.name] for f in dataclasses.fields(KeyRecord) if f.name != "revoked"}
        values["scopes"] = list(values["scopes"])
        return Revoked(KeyRecord(**values, revoked=True), cleanup_pending=error is not None)

    def revoked_elsewhere(self, key_id: str) -> None:
        """The revocation channel's message (the hub calls this)."""
        if KEY_ID.fullmatch(key_id):
            self._streams.close_key(key_id)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The background re-check of open streams and retry of pending clean-ups."""
        async with background(self._run(), "key-revocations"):
            yield

    async def _run(self) -> None:
        await keep_checking(self._check, self._check_s, backoff_max_s=BUG_BACKOFF_MAX_S)

    async def _check(self) -> None:
        await self._end_revoked_streams()
        await self._retry_due()

    async def _end_revoked_streams(self) -> None:
        key_ids = self._streams.key_ids()
        if not key_ids:
            return
        for row in await self._pool.fetch(_REVOKED_AMONG, key_ids):
            if self._streams.close_key(row["key_id"]):
                log.info("streams of revoked key %s ended by the re-check", row["key_id"])

    async def _retry_due(self) -> None:
        for row in await self._pool.fetch(_CLAIM_DUE, CLAIM_S, BATCH):
            error = await self._clean_up(row)
            await self._finish(row["key_id"], row["started"], error)
            if error is None:
                log.info("clean-up of revoked key %s retried: done", row["key_id"])

    async def _clean_up(self, row: asyncpg.Record) -> str | None:
        """One pass of the Redis and OpenFGA steps; None, or what failed."""
        key_id = row["key_id"]
        errors = []
        try:
            await self._key_store.cache_revoked(
                key_id, row["secret_sha256"], row["tenant"], list(row["scopes"])
            )
            await self._announce(key_id)
        except DependencyUnavailable as exc:
            errors.append(f"redis: {exc}")
        try:
            await self._authorizer.delete_user(openfga.user(subject_of(key_id)))
        except (DependencyUnavailable, PermanentError) as exc:
            errors.append(f"openfga: {exc}")
        if errors:
            log.warning("clean-up of revoked key %s pending: %s", key_id, "; ".join(errors))
        return "; ".join(errors)[:500] if errors else None

    async def _announce(self, key_id: str) -> None:
        """Publish the revocation to every replica's hub (asked even while the gate is
        closed, within the request timeout, as `KeyStore.cache_revoked` is)."""
        try:
            async with asyncio.timeout(self._wait_s):
                await self._redis.publish(self._keys.revocations, key_id)
        except (RedisError, TimeoutError) as exc:
            self._gate.failed("key_revocations", exc)
            raise DependencyUnavailable(f"revocation not published: {exc!r}") from exc

    async def _finish(self, key_id: str, started: datetime, error: str | None) -> None:
        try:
            await self._pool.execute(
                _FINISH, key_id, started, error, self._settle_s, RETRY_MIN_S, RETRY_MAX_S
            )
        except PG_ERRORS as exc:  # the row stays due: a later pass finishes it
            log.warning("revocation of %s: state not recorded (%r)", key_id, exc)


async def keep_checking(
    check: Callable[[], Awaitable[None]], every_s: float, *, backoff_max_s: float
) -> None:
    """Run `check` every `every_s` seconds until cancelled, whatever it raises.

    A Postgres error (an outage) is logged and the next check comes as usual; anything
    else (a bug, a row of a shape nobody expected) is logged with its traceback and the
    next check waits twice as long, up to `backoff_max_s`, until one succeeds. Either way
    the loop goes on: if it died, revoked keys' streams would stay open and pending
    clean-ups would never be retried, silently.
    """
    delay = every_s
    while True:
        await asyncio.sleep(delay)
        try:
            await check()
        except PG_ERRORS as exc:
            delay = every_s
            log.warning("revocation check failed (%r); next in %.1fs", exc, delay)
        except Exception:
            delay = min(delay * 2, max(backoff_max_s, every_s))
            log.exception("revocation check failed unexpectedly; next in %.1fs", delay)
        else:
            delay = every_s
