"""An authenticated mesh for the security tests: GATEWAY_REQUIRE_AUTH=true, two ingress
replicas, tenants of its own, and a sandbox of its own (Redis, OpenFGA, OPA instances, a
database), so a test may stop OpenFGA or OPA and revoke keys without touching anything
else on the machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.mesh import Mesh, mesh_env, provision, start_mesh
from testbed.sandbox import Sandbox, free_port, open_sandbox

JWT_SECRET = "test-secret-" + "x" * 32
OPENFGA_CACHE_TTL_S = 4.0


@dataclass
class AuthMesh:
    mesh: Mesh
    replica: Mesh  # a second ingress process of the same mesh
    sandbox: Sandbox
    run: str
    tenants_file: Path
    admin_key: str

    def tenant(self, name: str) -> str:
        return f"{name}-{self.run}"

    @property
    def urls(self) -> tuple[str, str]:
        return self.mesh.base_url, self.replica.base_url


def tenants_yaml(run: str) -> str:
    return f"""
tenants:
  default:
    max_output_tokens: 20
  alpha-{run}:
    max_output_tokens: 20
  beta-{run}:
    max_output_tokens: 20
  race-{run}:
    system_prompt: "Be brief."
    tokens_per_day: 330
    max_output_tokens: 20
    max_context_tokens: 1
  rate-{run}:
    rpm_per_key: 8
    rpm_per_tenant: 12
    max_output_tokens: 20
  closed-{run}:
    fail_open: false
    max_output_tokens: 20
  open-{run}:
    fail_open: true
    tokens_per_day: 100000
    max_output_tokens: 20
  keys-{run}:
    tokens_per_day: 100000
    rpm_per_key: 100
    max_output_tokens: 20
  models-{run}:
    models_allow: ["openai/*"]
    models_deny: ["openai/secret*"]
    max_output_tokens: 20
"""


@pytest.fixture(scope="session")
async def auth_sandbox(settings: CommonSettings) -> AsyncIterator[Sandbox]:
    async with open_sandbox("sec", settings) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
async def auth_mesh(fake_llm: str, auth_sandbox: Sandbox) -> AsyncIterator[AuthMesh]:
    run = auth_sandbox.name.rsplit("_", 1)[1]
    tenants_file = auth_sandbox.dir / "tenants.yaml"
    tenants_file.write_text(tenants_yaml(run))
    env = mesh_env(
        auth_sandbox,
        fake_llm + "/v1",
        GATEWAY_REQUIRE_AUTH="true",
        TENANTS_FILE=str(tenants_file),
        OPENFGA_CACHE_TTL_S=str(OPENFGA_CACHE_TTL_S),
        JWT_HS256_SECRET=JWT_SECRET,
        JWT_AUDIENCE="soma-test",
        JWT_SCOPE_MAP='{"soma:admin": ["admin"], "soma:turns": ["turns"]}',
        RETRY_ATTEMPTS="2",
    )
    admin_key = await provision(env)
    mesh = Mesh(env=env, log_dir=auth_sandbox.dir)
    replica = Mesh(env={**env, "GATEWAY_PORT": str(free_port())}, log_dir=auth_sandbox.dir)
    try:
        replica.start("ingress2", "ingress")
        await start_mesh(mesh)
        await replica.wait_healthy()
        yield AuthMesh(mesh, replica, auth_sandbox, run, tenants_file, admin_key)
    finally:
        replica.stop_all()
        mesh.stop_all()
        print(f"auth mesh logs: {auth_sandbox.dir}")


@pytest.fixture
async def admin(auth_mesh: AuthMesh) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the first replica holding the bootstrap (operator) key."""
    async with httpx.AsyncClient(
        base_url=auth_mesh.mesh.base_url,
        timeout=30,
        headers={"Authorization": f"Bearer {auth_mesh.admin_key}"},
    ) as client:
        yield client
