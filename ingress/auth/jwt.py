"""Bearer JWTs: HS256 with a shared secret, RS256/ES256 with keys from a JWKS URL.

`exp` and `sub` are required; `aud` and `iss` are checked when configured. The tenant
comes from the claim JWT_TENANT_CLAIM, the scopes from JWT_SCOPES_CLAIM (a space-separated
string or a list; JWT_DEFAULT_SCOPES when absent). The JWKS is fetched with the ingress's
httpx client and kept for JWKS_CACHE_S; an unknown `kid` refetches it (at most every 30 s,
so forged kids cannot hammer the identity provider).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt

from gateway_runtime.settings import AuthSettings
from ingress.auth.principal import Principal

ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
REFETCH_MIN_S = 30.0


class InvalidToken(Exception):
    """The token is malformed, expired, for someone else, or signed by an unknown key."""


class JwtVerifier:
    def __init__(self, settings: AuthSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._settings.jwt_hs256_secret or self._settings.jwt_jwks_url)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        algorithm = header.get("alg")
        key: Any
        if algorithm == "HS256" and self._settings.jwt_hs256_secret is not None:
            key = self._settings.jwt_hs256_secret.get_secret_value()
        elif algorithm in ASYMMETRIC and self._settings.jwt_jwks_url:
            key = await self._signing_key(str(header.get("kid", "")))
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
                    "require": ["exp", "sub"],
                    "verify_aud": s.jwt_audience is not None,
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
        raw = claims.get(s.jwt_scopes_claim)
        if isinstance(raw, str):
            scopes = frozenset(raw.split())
        elif isinstance(raw, list):
            scopes = frozenset(str(x) for x in raw)
        else:
            scopes = frozenset(s.jwt_default_scopes)
        return Principal(subject=f"jwt:{tenant}/{claims['sub']}", tenant=tenant, scopes=scopes)

    async def _signing_key(self, kid: str) -> Any:
        fresh = time.monotonic() - self._fetched_at < self._settings.jwks_cache_s
        if kid not in self._keys or not fresh:
            await self._refresh(force=not fresh)
        found = self._keys.get(kid)
        if found is None:
            raise InvalidToken(f"no signing key {kid!r} in the JWKS")
        return found.key

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < REFETCH_MIN_S:
                return
            url = self._settings.jwt_jwks_url or ""
            try:
                response = await self._http.get(url, timeout=5.0)
                response.raise_for_status()
                keyset = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                if not self._keys:
                    raise InvalidToken(f"JWKS unavailable: {exc!r}"[:200]) from exc
                return  # keep the keys we have; an IdP outage must not log everyone out
            self._keys = {k.key_id or "": k for k in keyset.keys}
            self._fetched_at = time.monotonic()
