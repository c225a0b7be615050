"""An authenticated mesh for the security tests: GATEWAY_REQUIRE_AUTH=true, two ingress
replicas, tenants of its own, the real OpenFGA, OPA, Redis and Postgres.

Tenant names carry a per-run suffix, so Redis counters (budgets, rate limits) of earlier
runs never leak into this one; the OpenFGA store is `soma-test`, provisioned here.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from tests.mesh import ROOT, WORKERS, Mesh, delete_topics, free_port, mesh_env

JWT_SECRET = "test-secret-" + "x" * 32
OPENFGA_CACHE_TTL_S = 4.0


@dataclass
class AuthMesh:
    mesh: Mesh
    replica: Mesh  # a second ingress process of the same mesh
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
    tokens_per_day: 210
    max_output_tokens: 20
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
  models-{run}:
    models_allow: ["openai/*"]
    models_deny: ["openai/secret*"]
    max_output_tokens: 20
"""


async def _run(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"{args} failed (is the infra up?)"
    return out.decode().strip()


@pytest.fixture(scope="session")
async def auth_mesh(fake_llm: str, settings: CommonSettings) -> AsyncIterator[AuthMesh]:
    run = uuid.uuid4().hex[:6]
    namespace = f"sec{run}"
    work = Path(tempfile.mkdtemp(prefix="soma-sec-"))
    tenants_file = work / "tenants.yaml"
    tenants_file.write_text(tenants_yaml(run))
    env = mesh_env(
        namespace,
        fake_llm + "/v1",
        settings,
        GATEWAY_REQUIRE_AUTH="true",
        TENANTS_FILE=str(tenants_file),
        OPENFGA_STORE_NAME="soma-test",
        OPENFGA_CACHE_TTL_S=str(OPENFGA_CACHE_TTL_S),
        JWT_HS256_SECRET=JWT_SECRET,
        JWT_AUDIENCE="soma-test",
        SOMA_HOME=str(work),
        RETRY_ATTEMPTS="2",
    )
    await _run(env, "-m", "gateway_runtime.provision")
    admin_key = await _run(env, "-m", "ingress.auth.bootstrap")
    mesh = Mesh(env=env, log_dir=work)
    replica = Mesh(env={**env, "GATEWAY_PORT": str(free_port())}, log_dir=work)
    mesh.start("ingress")
    replica.start("ingress2", "ingress")
    for worker in WORKERS:
        mesh.start(worker)
    try:
        await mesh.wait_healthy()
        await replica.wait_healthy()
        for stage in ("policy", "context", "llm", "persistence"):
            await mesh.wait_group_members(stage)
        yield AuthMesh(mesh, replica, run, tenants_file, admin_key)
        # An operator key must not outlive its test run in the shared database.
        key_id = admin_key.split("_")[1]
        async with httpx.AsyncClient(base_url=mesh.base_url, timeout=10) as client:
            r = await client.delete(
                f"/v1/keys/{key_id}", headers={"Authorization": f"Bearer {admin_key}"}
            )
            assert r.status_code == 200, r.text
    finally:
        replica.stop_all()
        mesh.stop_all()
        await delete_topics(settings.kafka_bootstrap_servers, namespace)
        print(f"auth mesh logs: {work}")


@pytest.fixture
async def admin(auth_mesh: AuthMesh) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the first replica holding the bootstrap (operator) key."""
    async with httpx.AsyncClient(
        base_url=auth_mesh.mesh.base_url,
        timeout=30,
        headers={"Authorization": f"Bearer {auth_mesh.admin_key}"},
    ) as client:
        yield client
