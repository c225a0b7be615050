"""Tenant configuration from `conf/tenants.yaml`, reloaded when the file changes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "conf" / "tenants.yaml"


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    system_prompt: str = "You are a helpful, concise assistant."
    extra: dict[str, Any] = field(default_factory=dict)


class TenantDirectory:
    """Looks tenants up; a `stat` per lookup notices edits of the file."""

    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self._path = path
        self._mtime = -1.0
        self._tenants: dict[str, Tenant] = {}
        self._reload_if_changed()

    def get(self, name: str) -> Tenant:
        self._reload_if_changed()
        return self._tenants.get(name) or self._tenants.get("default") or Tenant(name)

    def _reload_if_changed(self) -> None:
        try:
            mtime = os.stat(self._path).st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        raw = yaml.safe_load(self._path.read_text()) or {}
        tenants = {}
        for name, conf in (raw.get("tenants") or {}).items():
            conf = dict(conf or {})
            prompt = conf.pop("system_prompt", Tenant.system_prompt)
            tenants[name] = Tenant(name=name, system_prompt=prompt, extra=conf)
        self._tenants, self._mtime = tenants, mtime
        log.info("tenants loaded", extra={"fields": {"tenants": sorted(tenants)}})
