"""Bearer JWTs: HS256 with a shared secret, RS256/ES256 with keys from a JWKS URL.

`exp` and `sub` are required, and so is `aud` (JWT_AUDIENCE: the settings refuse JWTs
without one); `iss` is checked when JWT_ISSUER is set. The tenant is the claim
JWT_TENANT_CLAIM and must name a tenant of the tenants file (else `UnknownTenant`).
The gateway scopes are configuration, not the token's say-so: each IdP scope in
JWT_SCOPES_CLAIM (a space-separated string or a list) grants what JWT_SCOPE_MAP maps it
to; a token whose IdP scopes map to nothing gets JWT_DEFAULT_SCOPES. The JWKS is fetched
as ingress/auth/jwks.py says: once for every request that needs it, with a backoff after
a failure, so an IdP outage costs a fast 503 at worst.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt

from gateway_runtime.settings import AuthSettings
from ingress.auth.jwks import JwksCache, UnknownSigningKey
from ingress.auth.principal import Principal

ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")


class InvalidToken(Exception):
    """The token is malformed, expired, for someone else, or signed by an unknown key.

    `failed_login` is False for a `kid` the JWKS lacked but was not fetched again for
    (ingress/auth/jwks.py): a key the IdP may have published since, not a bad credential.
    """

    def __init__(self, message: str, *, failed_login: bool = True) -> None:
        super().__init__(message)
        self.failed_login = failed_login


class UnknownTenant(Exception):
    """A valid token whose tenant claim names no tenant of this gateway."""


class JwtVerifier:
    def __init__(
        self, settings: AuthSettings, http: httpx.AsyncClient, known_tenant: Callable[[str], bool]
    ) -> None:
        self._settings = settings
        self._known_tenant = known_tenant
        self.jwks: JwksCache | None = None
        if settings.jwt_jwks_url:
            self.jwks = JwksCache(
                settings.jwt_jwks_url,
                http,
                cache_s=settings.jwks_cache_s,
                fetch_timeout_s=settings.jwks_fetch_timeout_s,
                backoff_s=settings.jwks_backoff_s,
                backoff_max_s=settings.jwks_backoff_max_s,
            )

    @property
    def enabled(self) -> bool:
        return bool(self._settings.jwt_hs256_secret or self.jwks)

    async def verify(self, token: str) -> Principal:
        """The token's principal; InvalidToken, UnknownTenant, or JwksUnavailable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        algorithm = header.get("alg")
        key: Any
        if algorithm == "HS256" and self._settings.jwt_hs256_secret is not None:
            key = self._settings.jwt_hs256_secret.get_secret_value()
        elif algorithm in ASYMMETRIC and self.jwks is not None:
            try:
                key = await self.jwks.key(str(header.get("kid", "")))
            except UnknownSigningKey as exc:
                raise InvalidToken(str(exc), failed_login=exc.looked_up) from exc
        else:
            raise InvalidToken(f"tokens signed with {algorithm!r} are not accepted")
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_s,
                options={
                    "require": ["exp", "sub", "aud"],
                    "verify_iss": s.jwt_issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        s = self._settings
        tenant = claims.get(s.jwt_tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise InvalidToken(f"the token has no {s.jwt_tenant_claim!r} claim")
        if not self._known_tenant(tenant):
            raise UnknownTenant(f"the token's tenant {tenant!r} is not a tenant of this gateway")
        return Principal(
            subject=f"jwt:{tenant}/{claims['sub']}", tenant=tenant, scopes=self._scopes(claims)
        )

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        """The gateway scopes JWT_SCOPE_MAP grants for the token's IdP scopes."""
        s = self._settings
        raw = claims.get(s.jwt_scopes_claim)
        if isinstance(raw, str):
            idp_scopes = raw.split()
        elif isinstance(raw, list):
            idp_scopes = [str(x) for x in raw]
        else:
            idp_scopes = []
        granted = frozenset(g for idp in idp_scopes for g in s.jwt_scope_map.get(idp, ()))
        return granted or frozenset(s.jwt_default_scopes)
