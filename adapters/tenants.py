"""Tenant configuration from `conf/tenants.yaml`, reloaded when the file changes.

Every limit is per tenant; 0 means unlimited. `tokens_per_day` is the daily token budget
of the tenant's shared persona (`default`) and of each persona it declares under
`personas:` (each may override it); a persona_id the tenant does not declare spends the
shared budget. Budgets are enforced by the policy stage (reserved before the LLM call,
settled by the persistence stage); RPM/TPM limits by the ingress, across all replicas.
A tenant the file does not name is not defaulted: `find` says so and the policy stage
denies its turns. See docs/security.md for the whole scheme and conf/tenants.yaml for an
example.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from gateway_runtime.ports import DEFAULT_TENANT, Tenant

log = logging.getLogger(__name__)


_INT_FIELDS = (
    "tokens_per_day",
    "rpm_per_key",
    "rpm_per_tenant",
    "tpm_per_key",
    "tpm_per_tenant",
    "max_output_tokens",
    "max_context_tokens",
)
_LIST_FIELDS = ("models_allow", "models_deny", "tools_allow")


def parse_tenant(name: str, conf: dict[str, Any]) -> Tenant:
    """One tenant from its YAML mapping; unknown keys are kept in `extra`."""
    conf = dict(conf)
    values: dict[str, Any] = {}
    if "system_prompt" in conf:
        values["system_prompt"] = str(conf.pop("system_prompt"))
    if "fail_open" in conf:
        values["fail_open"] = bool(conf.pop("fail_open"))
    for key in _INT_FIELDS:
        if key in conf:
            value = int(conf.pop(key))
            if value < 0:
                raise ValueError(f"tenant {name}: {key} must be >= 0")
            values[key] = value
    for key in _LIST_FIELDS:
        if key in conf:
            values[key] = [str(p) for p in (conf.pop(key) or [])]
    if values.get("max_output_tokens") == 0:
        raise ValueError(f"tenant {name}: max_output_tokens must be >= 1 (it caps every call)")
    personas = _personas(name, conf.pop("personas", None))
    values["personas"] = frozenset(personas)
    values["persona_tokens_per_day"] = {p: n for p, n in personas.items() if n is not None}
    return Tenant(name=name, extra=conf, **values)


def _personas(name: str, raw: Any) -> dict[str, int | None]:
    """Declared personas and their budget overrides: a list of names, or a mapping of
    name to `{tokens_per_day: N}` (or nothing, for the tenant's `tokens_per_day`)."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        return {str(p): None for p in raw}
    if not isinstance(raw, dict):
        raise ValueError(f"tenant {name}: personas must be a list or a mapping")
    declared: dict[str, int | None] = {}
    for persona, conf in raw.items():
        if conf is not None and not isinstance(conf, dict):
            raise ValueError(f"tenant {name}: personas.{persona} must be a mapping")
        budget = (conf or {}).get("tokens_per_day")
        if budget is not None and int(budget) < 0:
            raise ValueError(f"tenant {name}: personas.{persona}.tokens_per_day must be >= 0")
        declared[str(persona)] = None if budget is None else int(budget)
    return declared


class TenantDirectory:
    """The `Tenants` port over the tenants file; a `stat` per lookup notices its edits."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime = -1.0
        self._tenants: dict[str, Tenant] = {}
        self._reload_if_changed()

    def find(self, name: str) -> Tenant | None:
        """The tenant's configuration; None when the file does not name it."""
        self._reload_if_changed()
        return self._tenants.get(name)

    def get(self, name: str) -> Tenant:
        """The tenant's configuration; one the file does not name gets `default`'s limits
        under its own name (see the `Tenants` port: never a reason to admit a turn)."""
        known = self.find(name)
        if known is not None:
            return known
        fallback = self._tenants.get(DEFAULT_TENANT)
        if fallback is None:
            return Tenant(name)
        return parse_tenant(name, _as_conf(fallback))

    def known(self, name: str) -> bool:
        self._reload_if_changed()
        return name in self._tenants

    def names(self) -> list[str]:
        self._reload_if_changed()
        return sorted(self._tenants)

    def _reload_if_changed(self) -> None:
        try:
            mtime = os.stat(self._path).st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        try:
            raw = yaml.safe_load(self._path.read_text()) or {}
            tenants = {
                str(name): parse_tenant(str(name), conf or {})
                for name, conf in (raw.get("tenants") or {}).items()
            }
        except (yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
            # A half-written or broken edit keeps the last good configuration.
            log.error("tenants file %s is invalid, keeping the previous one: %s", self._path, exc)
            self._mtime = mtime
            return
        self._tenants, self._mtime = tenants, mtime
        log.info("tenants loaded", extra={"fields": {"tenants": sorted(tenants)}})


def _as_conf(tenant: Tenant) -> dict[str, Any]:
    conf: dict[str, Any] = {k: getattr(tenant, k) for k in (*_INT_FIELDS, *_LIST_FIELDS)}
    conf["system_prompt"] = tenant.system_prompt
    conf["fail_open"] = tenant.fail_open
    conf["personas"] = {
        p: {"tokens_per_day": tenant.persona_tokens_per_day[p]}
        if p in tenant.persona_tokens_per_day
        else {}
        for p in tenant.personas
    }
    return {**tenant.extra, **conf}
