"""API keys: created with a one-time secret, stored as a hash, checked on every request.

A secret is `sk_<key_id>_<43 random url-safe chars>` (256 bits). Postgres keeps its
SHA-256 (a fast hash is right for a random secret; there is nothing to brute-force) and
the key's tenant, scopes and state. A request's key is looked up by the key_id its
secret names: first in Redis (`RedisKeys.api_key`, a short TTL), else in Postgres, and
the hashes are compared in constant time.

Revocation (ingress/revocation.py) writes Postgres, then overwrites the Redis entry with
a revoked one (`cache_revoked`; no TTL race: fills use SET NX and never replace it), so
every replica refuses the key from its next request; while that write fails it is
retried, and replicas that cannot reach Redis read Postgres. `last_used_at` is written
at most once a minute per key.

While Redis is unavailable (the process's `RedisGate`), keys are looked up in Postgres
alone and `last_used_at` is not written. A request waits on the cache at most
REDIS_REQUEST_TIMEOUT_S, and only until the gate knows: a hung Redis costs the first
requests that, later ones nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from ingress.auth.principal import Principal

log = logging.getLogger(__name__)

SECRET_RE = re.compile(r"^sk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
REVOKED_TTL_S = 7 * 86400
TOUCH_EVERY_S = 60
_COLUMNS = (
    "key_id, tenant, label, scopes, prefix, created_at, created_by, last_used_at,"
    " revoked_at IS NOT NULL AS revoked"
)


class InvalidKey(Exception):
    """No such key, or the secret does not match."""


class RevokedKey(Exception):
    """The secret matches a key that was revoked."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    label: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked: bool

    @property
    def subject(self) -> str:
        return subject_of(self.key_id)


def subject_of(key_id: str) -> str:
    return f"key:{key_id}"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _record(row: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord(**{**row, "scopes": list(row["scopes"])})


def _unavailable(exc: BaseException) -> DependencyUnavailable:
    return DependencyUnavailable(f"key store unavailable: {exc!r}"[:300])


_PG_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


class KeyStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        keys: RedisKeys,
        *,
        cache_ttl_s: int,
        gate: RedisGate | None = None,
        wait_s: float | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._keys = keys
        self._ttl = cache_ttl_s
        self._gate = gate or RedisGate.of(redis)
        self._wait_s = wait_s  # per cache call (None: the client's socket timeout)
        self._touched: dict[str, float] = {}  # key_id -> when this process last recorded use

    async def create(
        self, tenant: str, label: str, scopes: list[str], created_by: str
    ) -> tuple[KeyRecord, str]:
        """The new key and its secret (returned this once, never stored)."""
        key_id = secrets.token_hex(8)
        secret = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO api_keys (key_id, tenant, label, scopes, secret_sha256, prefix,"
                f" created_by) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}",
                key_id,
                tenant,
                label,
                sorted(set(scopes)),
                digest(secret),
                f"sk_{key_id}",
                created_by,
            )
        except _PG_ERRORS as exc:
            raise _unavailable(exc) from exc
        assert row is not None  # INSERT ... RETURNING returns the row
        return _record(dict(row)), secret

    async def list(self, tenant: str | None) -> list[KeyRecord]:
        """Keys of one tenant, or of all tenants (None), oldest first; never a secret."""
        try:
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1"
                " ORDER BY created_at, key_id",
                tenant,
            )
        except _PG_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [_record(dict(r)) for r in rows]

    async def get(self, key_id: str) -> KeyRecord | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = $1", key_id
            )
        except _PG_ERRORS as exc:
            raise _unavailable(exc) from exc
        return _record(dict(row)) if row else None

    async def cache_revoked(
        self, key_id: str, sha256: bytes, tenant: str, scopes: Sequence[str]
    ) -> None:
        """Replace the key's cached copy with a revoked one (Postgres says revoked already).

        Fills use NX, so a replica that read Postgres just before cannot undo this.
        DependencyUnavailable when Redis does not take it: the caller retries, as a
        replica's valid copy must not outlive the revocation. Redis is asked even while
        the gate is closed (within `wait_s`): a revocation is rare, and one made in the
        second after Redis came back is then complete at once, not at the next retry.
        """
        entry = _entry(sha256, tenant, [*scopes], revoked=True)
        try:
            async with asyncio.timeout(self._wait_s):
                await self._redis.set(self._keys.api_key(key_id), entry, ex=REVOKED_TTL_S)
        except (RedisError, TimeoutError) as exc:
            self._gate.failed("api_key_cache", exc)
            raise _unavailable(exc) from exc

    async def authenticate(self, secret: str) -> Principal:
        match = SECRET_RE.match(secret)
        if match is None:
            raise InvalidKey("not an API key of this gateway")
        key_id = match.group(1)
        entry = await self._lookup(key_id)
        if entry is None or not hmac.compare_digest(bytes.fromhex(entry["h"]), digest(secret)):
            raise InvalidKey("unknown API key")
        if entry["r"]:
            raise RevokedKey(f"API key {key_id} was revoked")
        await self._touch(key_id)
        return Principal(
            subject=subject_of(key_id),
            tenant=entry["t"],
            scopes=frozenset(entry["s"]),
            key_id=key_id,
        )

    async def _lookup(self, key_id: str) -> dict[str, Any] | None:
        cache_key, cached = self._keys.api_key(key_id), None
        if self._gate.available():
            try:
                async with asyncio.timeout(self._wait_s):
                    cached = await self._redis.get(cache_key)
            except (RedisError, TimeoutError) as exc:
                self._gate.failed("api_key_cache", exc)
        if not self._gate.available():
            self._gate.fallback("api_key_cache")
            cache_key = ""
        if cached:
            entry: dict[str, Any] = json.loads(cached)
            return None if entry.get("missing") else entry
        try:
            row = await self._pool.fetchrow(
                "SELECT secret_sha256, tenant, scopes, revoked_at IS NOT NULL AS revoked"
                " FROM api_keys WHERE key_id = $1",
                key_id,
            )
        except _PG_ERRORS as exc:
            raise _unavailable(exc) from exc
        value = (
            _entry(row["secret_sha256"], row["tenant"], list(row["scopes"]), row["revoked"])
            if row
            else json.dumps({"missing": True})
        )
        if cache_key:
            try:
                async with asyncio.timeout(self._wait_s):
                    await self._redis.set(cache_key, value, ex=self._ttl, nx=True)
            except (RedisError, TimeoutError) as exc:
                self._gate.failed("api_key_cache", exc)
        found: dict[str, Any] = json.loads(value)
        return found if row else None

    async def _touch(self, key_id: str) -> None:
        """Record use, at most once a minute per key across all replicas (not without Redis).

        A key this process recorded within the minute is not asked of Redis again: a
        round trip per request saved, for a `last_used_at` that may lag by a minute."""
        now = time.monotonic()
        if now - self._touched.get(key_id, -math.inf) < TOUCH_EVERY_S:
            return
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched[key_id] = now
        if not self._gate.available():
            return
        try:
            async with asyncio.timeout(self._wait_s):
                first = await self._redis.set(
                    self._keys.api_key_used(key_id), 1, ex=TOUCH_EVERY_S, nx=True
                )
        except (RedisError, TimeoutError) as exc:
            self._gate.failed("api_key_cache", exc)
            return
        if first:
            try:
                await self._pool.execute(
                    "UPDATE api_keys SET last_used_at = now() WHERE key_id = $1", key_id
                )
            except _PG_ERRORS as exc:
                log.warning("could not record key use: %r", exc)


def _entry(sha256: bytes, tenant: str, scopes: list[str], revoked: bool) -> str:
    return json.dumps({"h": sha256.hex(), "t": tenant, "s": scopes, "r": revoked})
