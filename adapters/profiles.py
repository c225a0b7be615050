"""Model profiles in Postgres: read by the context stage, managed through the ingress.

A profile names the model serving a role (`dialogue`, `summary`, ...) in a deployment
mode (`local`, `prod`, ...), and the roles to fall back to, in order, when it fails. Its
`api_key_ref` names the provider secret its calls carry (llm_worker/credentials.py); its
`kwargs` are generation arguments only (`PROVIDER_KWARGS`), so they cannot carry another
endpoint, headers or credentials past the egress policy (gateway_runtime/egress.py).
"""

from __future__ import annotations

import json
import time

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import DEFAULT_ROLE, StoredProfile
from gateway_runtime.settings import ProfileSettings

_COLUMNS = (
    "role, deployment_mode, model, base_url, api_path, temperature, max_tokens, kwargs,"
    " fallbacks, cost_per_1k_tokens, api_key_ref"
)
# The ref of LLM_API_KEY: the seeded default profile carries it (and migration 021 gives
# it to the default profiles of databases upgraded across 019, so both end up the same).
DEFAULT_SECRET_REF = "default"
# What `kwargs` may hold: arguments about the generation. LiteLLM would also take
# `api_base`, `base_url`, `api_key`, `extra_headers`, ... from them: never.
PROVIDER_KWARGS = frozenset(
    {
        "top_p", "top_k", "min_p", "stop", "seed", "presence_penalty", "frequency_penalty",
        "repetition_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format",
        "reasoning_effort", "parallel_tool_calls", "tool_choice", "user",
    }
)  # fmt: skip


def _profile(row: asyncpg.Record) -> StoredProfile:
    values = dict(row)
    values["kwargs"] = json.loads(values["kwargs"]) if values["kwargs"] else {}
    values["fallbacks"] = list(values["fallbacks"] or [])
    return StoredProfile(**values)


def _translate(exc: BaseException) -> DependencyUnavailable:
    return DependencyUnavailable(f"model profiles unavailable: {exc!r}")


class ProfileStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def list(self, deployment_mode: str | None = None) -> list[StoredProfile]:
        try:
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM model_profiles"
                " WHERE $1::text IS NULL OR deployment_mode = $1"
                " ORDER BY deployment_mode, role",
                deployment_mode,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise _translate(exc) from exc
        return [_profile(r) for r in rows]

    async def get(self, role: str, deployment_mode: str) -> StoredProfile | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM model_profiles WHERE role = $1 AND deployment_mode = $2",
                role,
                deployment_mode,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise _translate(exc) from exc
        return _profile(row) if row else None

    async def put(self, profile: StoredProfile, *, create_only: bool = False) -> bool:
        """Insert or replace; with `create_only`, returns False if it already existed."""
        conflict = (
            "DO NOTHING"
            if create_only
            else "DO UPDATE SET model = EXCLUDED.model, base_url = EXCLUDED.base_url,"
            " api_path = EXCLUDED.api_path, temperature = EXCLUDED.temperature,"
            " max_tokens = EXCLUDED.max_tokens, kwargs = EXCLUDED.kwargs,"
            " fallbacks = EXCLUDED.fallbacks, cost_per_1k_tokens = EXCLUDED.cost_per_1k_tokens,"
            " api_key_ref = EXCLUDED.api_key_ref, updated_at = now()"
        )
        try:
            result = await self._pool.fetchval(
                f"INSERT INTO model_profiles ({_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)"
                f" ON CONFLICT (role, deployment_mode) {conflict} RETURNING true",
                profile.role,
                profile.deployment_mode,
                profile.model,
                profile.base_url,
                profile.api_path,
                profile.temperature,
                profile.max_tokens,
                json.dumps(profile.kwargs),
                profile.fallbacks,
                profile.cost_per_1k_tokens,
                profile.api_key_ref,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise _translate(exc) from exc
        return bool(result)

    async def delete(self, role: str, deployment_mode: str) -> bool:
        try:
            status = await self._pool.execute(
                "DELETE FROM model_profiles WHERE role = $1 AND deployment_mode = $2",
                role,
                deployment_mode,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise _translate(exc) from exc
        return status.endswith(" 1")


class CachedProfiles:
    """The `Profiles` port: a role's profile and fallbacks, re-read every `ttl_s`.

    Edits through the API reach the stage within `ttl_s`, with no restart.
    """

    def __init__(self, store: ProfileStore, default: StoredProfile, ttl_s: float = 2.0) -> None:
        self._store = store
        self._default = default
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, StoredProfile | None]] = {}

    async def ensure_default(self) -> None:
        await self._store.put(self._default, create_only=True)

    async def _get(self, role: str, mode: str) -> StoredProfile | None:
        now = time.monotonic()
        hit = self._cache.get((role, mode))
        if hit and now - hit[0] < self._ttl_s:
            return hit[1]
        profile = await self._store.get(role, mode)
        self._cache[(role, mode)] = (now, profile)
        return profile

    async def resolve(self, role: str) -> tuple[StoredProfile, list[StoredProfile]]:
        """The role's profile (the default profile if the role has none) and its fallbacks."""
        mode = self._default.deployment_mode
        primary = await self._get(role, mode) or await self._get(self._default.role, mode)
        primary = primary or self._default
        fallbacks = []
        for name in primary.fallbacks:
            found = await self._get(name, mode)
            if found is not None and found.role != primary.role:
                fallbacks.append(found)
        return primary, fallbacks


def default_profile(settings: ProfileSettings) -> StoredProfile:
    """The deployment mode's default profile (role `dialogue`) from the settings: what a
    turn runs on until someone stores another."""
    return StoredProfile(
        role=DEFAULT_ROLE,
        deployment_mode=settings.deployment_mode,
        model=settings.default_model,
        base_url=settings.default_model_base_url or settings.local_llm_base_url,
        temperature=settings.default_temperature,
        max_tokens=settings.default_max_tokens,
        api_key_ref=DEFAULT_SECRET_REF,
    )
