"""Settings of authentication and authorization at the ingress (composed into IngressSettings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from gateway_runtime.authz import OpenFgaSettings
from gateway_runtime.settings import STACK_ENV


class AuthSettings(OpenFgaSettings):
    model_config = SettingsConfigDict(env_file=STACK_ENV, extra="ignore")

    # How long a replica may trust its Redis copy of a key (revocation replaces the copy
    # at once, so this only bounds how long Postgres goes unasked).
    api_key_cache_ttl_s: int = 30
    # JWT bearer tokens: HS256 with this secret, and/or RS256/ES256 with keys from a JWKS URL.
    jwt_hs256_secret: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwks_cache_s: float = 300.0
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_scopes_claim: str = "scope"
    jwt_default_scopes: list[str] = ["turns"]
    jwt_leeway_s: int = 30
    # Where `make up` keeps the bootstrap admin key (mode 0600).
    soma_home: Path = Path.home() / ".cache" / "soma-gateway"

    @field_validator("jwt_hs256_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("JWT_HS256_SECRET must be at least 32 characters")
        return value
