"""The authentication and authorization services the ingress builds once at start-up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
from redis.asyncio import Redis

from adapters.openfga import FgaAuthorizer
from adapters.tenants import TenantDirectory
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import AuthSettings
from ingress.auth.errors import unauthenticated, unavailable
from ingress.auth.jwt import InvalidToken, JwtVerifier
from ingress.auth.keys import InvalidKey, KeyStore, RevokedKey
from ingress.auth.principal import Principal
from ingress.auth.sessions import SessionAccess
from ingress.ratelimit import RateLimiter


@dataclass
class AuthServices:
    require_auth: bool
    keys: KeyStore
    jwt: JwtVerifier
    authorizer: FgaAuthorizer
    sessions: SessionAccess
    limiter: RateLimiter
    tenants: TenantDirectory

    async def authenticate(self, credential: str) -> Principal:
        """The principal a bearer credential (API key or JWT) stands for, or a 401."""
        try:
            if credential.startswith("sk_"):
                return await self.keys.authenticate(credential)
            if self.jwt.enabled and credential.count(".") == 2:
                return await self.jwt.verify(credential)
        except RevokedKey as exc:
            raise unauthenticated("key_revoked", str(exc)) from exc
        except InvalidKey as exc:
            raise unauthenticated("invalid_api_key", str(exc)) from exc
        except InvalidToken as exc:
            raise unauthenticated("invalid_token", f"bearer token rejected: {exc}"[:300]) from exc
        raise unauthenticated("invalid_credentials", "not an API key or an accepted bearer token")


def authz_unavailable(exc: BaseException) -> Exception:
    return unavailable(
        "authz_unavailable",
        f"authorization cannot be decided now ({exc}); the request is refused (fail closed)",
    )


@contextlib.asynccontextmanager
async def open_auth(
    settings: AuthSettings,
    *,
    require_auth: bool,
    pool: asyncpg.Pool,
    redis: Redis,
    keys: RedisKeys,
    http: httpx.AsyncClient,
) -> AsyncIterator[AuthServices]:
    authorizer = FgaAuthorizer(settings)
    gate = RedisGate.of(redis)  # one for the key cache and the limiter: one Redis
    wait_s = settings.redis_request_timeout_s
    limiter = RateLimiter(redis, keys, pool, gate=gate, wait_s=wait_s)
    try:
        yield AuthServices(
            require_auth=require_auth,
            keys=KeyStore(
                pool,
                redis,
                keys,
                cache_ttl_s=settings.api_key_cache_ttl_s,
                gate=gate,
                wait_s=wait_s,
            ),
            jwt=JwtVerifier(settings, http),
            authorizer=authorizer,
            sessions=SessionAccess(pool, authorizer),
            limiter=limiter,
            tenants=TenantDirectory(settings.tenants_file),
        )
    finally:
        await limiter.close()
        await gate.close()
        await authorizer.close()
