"""Settings have one home: one class per service, the only code that reads the environment.

Outside the local profile, loopback addresses and the local stack's database password are
refused at start-up; every setting is documented in docs/configuration.md.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from gateway_runtime import settings as settings_module
from gateway_runtime.settings import CommonSettings, IngressSettings, LLMSettings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = (
    "gateway_runtime", "adapters", "schemas", "ingress", "policy_worker", "context_worker",
    "llm_worker", "tool_dispatcher", "persistence_worker", "deadletter_index", "soma_cli",
    "deploy",
)  # fmt: skip
CLASSES = [
    c
    for c in vars(settings_module).values()
    if isinstance(c, type)
    and issubclass(c, BaseSettings)
    and c.__module__ == "gateway_runtime.settings"
]
DEPLOYED = {
    "soma_profile": "production",
    "kafka_bootstrap_servers": "kafka-0.kafka:9092,kafka-1.kafka:9092",
    "kafka_security_protocol": "SASL_SSL",
    "postgres_dsn": "postgresql://soma:s3cret-from-a-vault@db.internal:5432/soma",
    "redis_url": "redis://redis.internal:6379/0",
    "openfga_api_url": "http://openfga.internal:8080",
    "opa_url": "http://opa.internal:8181",
}


def _environment_uses(path: Path) -> list[str]:
    """`os.environ` / `os.getenv` uses in a module, as 'line: read|write'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                found.append(node.lineno)
    return [f"{path.relative_to(ROOT)}:{line}" for line in found]


def test_only_the_settings_module_reads_the_environment() -> None:
    uses = [u for d in PRODUCT for p in (ROOT / d).rglob("*.py") for u in _environment_uses(p)]
    allowed = ("gateway_runtime/settings.py", "llm_worker/litellm_model.py")
    assert [u for u in uses if not u.startswith(allowed)] == []
    # The LLM worker exports LiteLLM's switches (from its settings) before importing it:
    # writes, at start-up, never reads.
    source = (ROOT / "llm_worker/litellm_model.py").read_text().splitlines()
    for use in uses:
        if use.startswith("llm_worker/"):
            line = source[int(use.split(":")[1]) - 1]
            assert re.match(r'\s*os\.environ\["LITELLM_[A-Z_]+"\] = settings\.', line), line


def test_settings_classes_live_in_one_module() -> None:
    defined = []
    for directory in PRODUCT:
        for path in (ROOT / directory).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Settings"):
                    defined.append(str(path.relative_to(ROOT)))
    assert set(defined) == {"gateway_runtime/settings.py"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_documented_in_configuration_md(cls: type[BaseSettings]) -> None:
    documented = set(
        re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "docs/configuration.md").read_text())
    )
    missing = {field.upper() for field in cls.model_fields} - documented - {"SERVICE_NAME"}
    assert not missing, f"{cls.__name__}: undocumented settings {sorted(missing)}"


def test_the_local_profile_takes_the_stack_defaults() -> None:
    settings = CommonSettings(soma_profile="local")
    assert settings.postgres_dsn.startswith("postgresql://soma:soma@127.0.0.1")


def test_a_deployed_profile_with_real_addresses_starts() -> None:
    assert IngressSettings(**DEPLOYED).soma_profile == "production"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kafka_bootstrap_servers", "kafka-0.kafka:9092,127.0.0.1:19092"),
        ("postgres_dsn", "postgresql://soma:s3cret@localhost:5432/soma"),
        ("redis_url", "redis://[::1]:6379/0"),
        ("openfga_api_url", "http://127.0.0.2:8080"),
        ("opa_url", "http://0.0.0.0:8181"),
        ("postgres_dsn", "postgresql://soma:soma@db.internal:5432/soma"),
        ("postgres_dsn", "postgresql://soma@db.internal:5432/soma"),
    ],
)
def test_a_deployed_profile_refuses_loopback_and_the_local_password(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=r"loopback|password"):
        LLMSettings(**{**DEPLOYED, field: value})  # type: ignore[arg-type]


def test_auth_off_listens_on_loopback_only_and_checks_host_names() -> None:
    """Anonymous callers (auth off) must be this machine's, and a DNS-rebinding page's
    own Host name is refused (ingress/host_check.py)."""
    for host in ("0.0.0.0", "::", "10.1.2.3", "gateway.example"):
        with pytest.raises(ValidationError, match="loopback"):
            IngressSettings(gateway_require_auth=False, gateway_host=host)
    for host in ("127.0.0.1", "::1", "[::1]", "localhost"):
        local = IngressSettings(gateway_require_auth=False, gateway_host=host)
        assert local.allowed_hosts == ["localhost", "127.0.0.1", "[::1]"]
    deployed = IngressSettings(gateway_require_auth=True, gateway_host="0.0.0.0")
    assert deployed.allowed_hosts is None  # credentials guard it; any Host
    pinned = IngressSettings(gateway_host="0.0.0.0", gateway_allowed_hosts=["gw.example"])
    assert pinned.allowed_hosts == ["gw.example"]
