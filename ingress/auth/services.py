"""The authentication and authorization services the ingress builds once at start-up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
from redis.asyncio import Redis

from adapters.openfga import FgaAuthorizer
from adapters.ratelimit import RateLimiter
from adapters.session_claims import SessionClaims
from adapters.tenants import TenantDirectory
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import AuthSettings
from ingress.auth.anonymous import AnonymousSessions
from ingress.auth.errors import Denied, forbidden, unauthenticated, unavailable
from ingress.auth.jwks import JwksUnavailable
from ingress.auth.jwt import InvalidToken, JwtVerifier, UnknownTenant
from ingress.auth.keys import InvalidKey, KeyStore, RevokedKey
from ingress.auth.principal import Principal
from ingress.auth.sessions import SessionAccess
from ingress.auth.throttle import FailedAuthThrottle


@dataclass
class AuthServices:
    require_auth: bool
    keys: KeyStore
    jwt: JwtVerifier
    authorizer: FgaAuthorizer
    sessions: SessionAccess
    limiter: RateLimiter
    tenants: TenantDirectory
    throttle: FailedAuthThrottle
    anonymous: AnonymousSessions

    async def authenticate(self, credential: str, client: str = "") -> Principal:
        """The principal a bearer credential (API key or JWT) stands for, or a 401; 429
        for a client address (`client`) with too many failed authentications of late
        (ingress/auth/throttle.py)."""
        fingerprint = self.throttle.fingerprint(credential)
        wait = self.throttle.retry_after(client, fingerprint)
        if wait is not None:
            raise Denied(
                429,
                "too_many_failed_authentications",
                "too many failed authentications from this address; retry after the"
                " Retry-After seconds",
                retry_after=wait,
            )
        try:
            principal = await self._authenticate(credential)
        except Denied as exc:
            if exc.status_code == 401 and _failed_login(exc):
                self.throttle.failed(client, fingerprint)
            raise
        self.throttle.verified(fingerprint)
        return principal

    async def _authenticate(self, credential: str) -> Principal:
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
        except UnknownTenant as exc:
            raise forbidden("unknown_tenant", str(exc)[:300]) from exc
        except JwksUnavailable as exc:
            raise unavailable("jwks_unavailable", str(exc), exc.retry_after) from exc
        raise unauthenticated("invalid_credentials", "not an API key or an accepted bearer token")


def _failed_login(denied: Denied) -> bool:
    """Whether a 401 counts against its client: not a signing key the JWKS in hand lacks
    and was not fetched again for (the IdP may have published it since)."""
    cause = denied.__cause__
    return not isinstance(cause, InvalidToken) or cause.failed_login


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
    tenants = TenantDirectory(settings.tenants_file)
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
            jwt=JwtVerifier(settings, http, tenants.known),
            authorizer=authorizer,
            sessions=SessionAccess(SessionClaims(pool, authorizer)),
            limiter=limiter,
            tenants=tenants,
            throttle=FailedAuthThrottle(
                settings.auth_failure_limit, settings.auth_failure_window_s
            ),
            anonymous=AnonymousSessions(pool),
        )
    finally:
        await limiter.close()
        await gate.close()
        await authorizer.close()
