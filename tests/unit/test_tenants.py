"""conf/tenants.yaml parsing: limits, persona budgets, allow-lists, reloads, bad edits."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

from adapters.tenants import TenantDirectory
from gateway_runtime.ports import Tenant
from gateway_runtime.settings import CommonSettings
from schemas.tools import load_definitions

CONF = """
tenants:
  default:
    tokens_per_day: 100
    rpm_per_key: 5
  acme:
    tokens_per_day: 1000
    personas:
      analyst: {tokens_per_day: 5000}
    tpm_per_tenant: 900
    models_allow: ["openai/*"]
    models_deny: ["openai/gpt-4*"]
    tools_allow: ["calc*"]
    max_output_tokens: 64
    fail_open: true
    custom: kept
"""


@pytest.fixture
def directory(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(CONF)
    return TenantDirectory(path)


def test_limits_and_persona_budgets(directory: TenantDirectory) -> None:
    acme = directory.get("acme")
    assert (acme.tokens_per_day, acme.tpm_per_tenant, acme.max_output_tokens) == (1000, 900, 64)
    assert acme.fail_open is True and acme.rpm_per_key == 0
    assert acme.budget_for("analyst") == 5000
    assert acme.budget_persona(None) == acme.budget_persona("other") == "default"
    assert acme.budget_for("default") == 1000
    assert acme.extra == {"custom": "kept"}


def test_model_and_tool_lists(directory: TenantDirectory) -> None:
    acme = directory.get("acme")
    assert acme.model_allowed("openai/gpt-3.5")
    assert not acme.model_allowed("openai/gpt-4o")
    assert not acme.model_allowed("anthropic/claude")
    assert acme.tool_allowed("calculator") and not acme.tool_allowed("shell")
    assert Tenant("x").model_allowed("anything/at-all")
    assert not Tenant("x").tool_allowed("shell")  # no tools unless listed


def test_unknown_tenants_get_the_defaults_under_their_own_name(directory: TenantDirectory) -> None:
    other = directory.get("globex")
    assert other.name == "globex"
    assert (other.tokens_per_day, other.rpm_per_key) == (100, 5)
    assert directory.known("acme") and not directory.known("globex")


def test_a_broken_edit_keeps_the_last_good_configuration(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(CONF)
    directory = TenantDirectory(path)
    path.write_text("tenants:\n  acme:\n    tokens_per_day: -5\n")
    os.utime(path, (1, 1))
    assert directory.get("acme").tokens_per_day == 1000
    path.write_text("tenants:\n  acme:\n    tokens_per_day: 7\n")
    os.utime(path, (2, 2))
    assert directory.get("acme").tokens_per_day == 7


def test_the_shipped_file_parses() -> None:
    directory = TenantDirectory(CommonSettings().tenants_file)
    assert "default" in directory.names()
    assert directory.get("acme").budget_for("analyst") > directory.get("acme").tokens_per_day


def test_the_shipped_allow_lists_name_tools_that_exist() -> None:
    directory = TenantDirectory(CommonSettings().tenants_file)
    tools = set(load_definitions())
    for name in directory.names():
        for pattern in directory.get(name).tools_allow:
            assert fnmatch.filter(tools, pattern), f"{name}: no tool matches {pattern!r}"
