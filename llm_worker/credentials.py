"""Which provider secret a model call carries: the one its stored profile names.

A profile holds `api_key_ref`, the name of a secret, never the secret. The LLM stage reads
the ref from the stored profile (not from the turn, which a Kafka producer could write),
and sends the secret only to the endpoint stored beside the ref: the turn's `base_url`
must be the stored one and, when that is none (the provider's default endpoint), the
turn's provider must be the stored one too (`provider_of`). A secret goes where an
operator pointed the profile that names it, nowhere else.

Secrets, by ref: MODEL_API_KEYS (a settings map), then LLM_API_KEY for the ref `default`
(the seeded default profile's), then the file `$SOMA_HOME/secrets/<ref>`, which must be a
regular file no one but its owner may read or write (mode 0600 or 0400): a secret others
can read is refused, as is a ref that names no secret. Either way the call is not made
(`ProviderError`, not retried), rather than made without the key the operator meant.
Files are re-read at most every `ttl_s`, so a rotated secret is used within that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from adapters.profiles import DEFAULT_SECRET_REF, ProfileStore
from gateway_runtime.errors import DependencyUnavailable, ProviderError
from gateway_runtime.ports import StoredProfile
from schemas.events import ModelProfile

log = logging.getLogger(__name__)
_UNAVAILABLE = "credential unavailable"


class Credentials(Protocol):
    async def api_key(self, profile: ModelProfile) -> str | None:
        """The secret to send with a call on `profile` (None: no credential)."""
        ...


class SecretSource:
    """Provider secrets by name, from the settings' map or from files in `directory`."""

    def __init__(self, directory: Path, named: Mapping[str, str], ttl_s: float = 2.0) -> None:
        self._directory = directory
        self._named = dict(named)
        self._ttl_s = ttl_s
        self._files: dict[str, tuple[float, str | None]] = {}

    async def get(self, ref: str) -> str | None:
        """The secret named `ref`; None for `default` without one; else ProviderError."""
        if ref in self._named:
            return self._named[ref]
        now = time.monotonic()
        hit = self._files.get(ref)
        if hit is None or now - hit[0] >= self._ttl_s:
            hit = (now, await asyncio.to_thread(self._read, ref))
            self._files[ref] = hit
        if hit[1] is None and ref != DEFAULT_SECRET_REF:
            raise ProviderError(
                f"secret {ref!r} is neither in MODEL_API_KEYS nor in {self._directory}",
                retryable=False,
                reason=_UNAVAILABLE,
            )
        return hit[1]

    def _read(self, ref: str) -> str | None:
        if "/" in ref or ref.startswith("."):
            return None  # refs are names (the API's pattern); never a path
        try:
            fd = os.open(self._directory / ref, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink (ELOOP), no permission, ...
            raise ProviderError(
                f"secret file {ref!r} cannot be opened: {exc!r}",
                retryable=False,
                reason=_UNAVAILABLE,
            ) from exc
        with os.fdopen(fd) as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
                raise ProviderError(
                    f"secret file {ref!r} is readable or writable by others"
                    f" (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it",
                    retryable=False,
                    reason=_UNAVAILABLE,
                )
            return file.read().strip() or None


def provider_of(model: str) -> str:
    """What picks the provider's default endpoint: the model's prefix (`anthropic` of
    `anthropic/claude-3-5-haiku`); a model without one is given to LiteLLM, which infers
    the provider from the whole name (`gpt-4o` is OpenAI's, `claude-3-5-haiku` Anthropic's),
    so then the whole name."""
    prefix, slash, _ = model.partition("/")
    return prefix if slash else model


def same_endpoint(stored: StoredProfile, profile: ModelProfile) -> bool:
    """Whether a call on `profile` goes where `stored` points."""
    if (stored.base_url or None) != (profile.base_url or None):
        return False
    return bool(stored.base_url) or provider_of(stored.model) == provider_of(profile.model)


class ProfileCredentials:
    """The `Credentials` port: the stored profile's ref (cached `ttl_s`), its secret."""

    def __init__(self, store: ProfileStore, secrets: SecretSource, ttl_s: float = 2.0) -> None:
        self._store = store
        self._secrets = secrets
        self._ttl_s = ttl_s
        self._profiles: dict[tuple[str, str], tuple[float, StoredProfile | None]] = {}

    async def api_key(self, profile: ModelProfile) -> str | None:
        stored = await self._stored(profile.role, profile.deployment_mode)
        if stored is None or stored.api_key_ref is None:
            return None
        if not same_endpoint(stored, profile):
            log.warning(
                "profile %s/%s: the turn's endpoint (base_url, or provider when none) is not"
                " the stored one; secret %r withheld",
                profile.role,
                profile.deployment_mode,
                stored.api_key_ref,
            )
            return None
        return await self._secrets.get(stored.api_key_ref)

    async def _stored(self, role: str, mode: str) -> StoredProfile | None:
        now = time.monotonic()
        hit = self._profiles.get((role, mode))
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        try:
            found = await self._store.get(role, mode)
        except DependencyUnavailable as exc:
            # Without Postgres the last answer stands, however old; with none, the call
            # goes without a credential (to the turn's own endpoint, which passed the
            # egress policy): a keyless local model still answers, a keyed one says 401.
            log.warning("profile %s/%s unreadable (%s); using what was last read", role, mode, exc)
            return hit[1] if hit is not None else None
        self._profiles[(role, mode)] = (now, found)
        return found
