"""The outage mesh: a mesh whose sandbox runs its own Postgres and Kafka broker.

The operators' tests hang (SIGSTOP) and stop those two under a running mesh; the
machine's own servers (and any gateway `make up` runs) are never touched. Deadlines are
short so a hung dependency turns into a dead letter within seconds. Retries are each
stage's default (3; the persistence stage, whose turns are answered already, 10).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.mesh import Mesh, mesh_env, provision, start_mesh
from testbed.sandbox import Sandbox, open_sandbox


@dataclass
class OutageMesh:
    sandbox: Sandbox
    mesh: Mesh
    operator_key: str  # the bootstrap key (operator, admin, turns)

    @property
    def dsn(self) -> str:
        return self.sandbox.postgres_dsn


@pytest.fixture(scope="session")
async def outage_mesh(settings: CommonSettings, fake_llm: str) -> AsyncIterator[OutageMesh]:
    async with open_sandbox("outage", settings, own=("postgres", "kafka")) as sandbox:
        env = mesh_env(
            sandbox,
            fake_llm + "/v1",
            POSTGRES_TIMEOUT_S="1",
            REDIS_TIMEOUT_S="1",
            KAFKA_PUBLISH_TIMEOUT_S="0.5",
            OUTBOX_RELAY_INTERVAL_S="0.2",
            SSE_KEEPALIVE_S="1",
        )
        mesh = Mesh(env=env, log_dir=sandbox.dir)
        try:
            key = await provision(mesh.env)
            await start_mesh(mesh)
            yield OutageMesh(sandbox, mesh, key)
        finally:
            mesh.stop_all()
            print(f"outage mesh logs: {sandbox.dir}")


@pytest.fixture
async def outage_client(outage_mesh: OutageMesh) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous client (auth is off, as in `make up`'s local profile)."""
    async with httpx.AsyncClient(base_url=outage_mesh.mesh.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def operator(outage_mesh: OutageMesh) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {outage_mesh.operator_key}"}
    async with httpx.AsyncClient(
        base_url=outage_mesh.mesh.base_url, timeout=30, headers=headers
    ) as client:
        yield client
