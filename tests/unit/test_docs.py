"""The docs that must stay true to the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [
    "ingress.settings:IngressSettings",
    "policy_worker.settings:PolicySettings",
    "context_worker.settings:ContextSettings",
    "llm_worker.settings:LLMSettings",
    "tool_dispatcher.settings:ToolSettings",
    "persistence_worker.settings:PersistenceSettings",
    "gateway_runtime.tenants:TenantSettings",
]


@pytest.mark.parametrize("target", SETTINGS)
def test_every_setting_is_documented_in_configuration_md(target: str) -> None:
    module, name = target.split(":")
    cls = getattr(importlib.import_module(module), name)
    documented = set(
        re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "docs/configuration.md").read_text())
    )
    missing = {field.upper() for field in cls.model_fields} - documented - {"SERVICE_NAME"}
    assert not missing, f"{name}: undocumented settings {sorted(missing)}"


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    assert "make up" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
