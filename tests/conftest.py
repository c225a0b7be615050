"""Fixtures shared by the integration and end-to-end tests.

They need the machine's Kafka and Postgres servers (`make test` starts them with
deploy/infra.sh). Everything else a mesh uses is its sandbox's own (testbed/sandbox.py):
Redis, OpenFGA and OPA instances, a database, a Kafka namespace; so the suite can stop
any of them, and a gateway that `make up` runs on the same machine is never touched
(`running_stack_untouched` checks it). The model upstream is a fake on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.mesh import WORKERS, Mesh, mesh_env, provision, start_fake_upstream, start_mesh
from testbed.sandbox import Sandbox, free_port, open_sandbox
from tests.stack_guard import snapshot


@pytest.fixture(scope="session")
def settings() -> CommonSettings:
    """The machine's running stack (what `make up` uses): the suite only reads it."""
    return CommonSettings()


@pytest.fixture(scope="session", autouse=True)
async def running_stack_untouched(settings: CommonSettings) -> AsyncIterator[None]:
    """The stack `make up` runs here is exactly as it was once the suite is done."""
    before = await snapshot(settings)
    yield
    after = await snapshot(settings)
    changed = before.differences(after)
    assert not changed, "the suite changed the running stack:\n" + "\n".join(changed)


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[str]:
    """The fake upstream's base URL (50 ms to first token, 20 tokens, 5 ms apart)."""
    proc, url = start_fake_upstream()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
async def sandbox(settings: CommonSettings) -> AsyncIterator[Sandbox]:
    """The backing services of the auth-off mesh, and of tests that need only a Redis."""
    async with open_sandbox("test", settings) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
async def mesh(fake_llm: str, sandbox: Sandbox) -> AsyncIterator[Mesh]:
    """A mesh with auth off (`make up`'s local profile), models on the fake upstream;
    each stage worker serves /metrics on a port of its own, as under `make up`."""
    metrics = {w: {"METRICS_PORT": str(free_port())} for w in WORKERS}
    mesh = Mesh(env=mesh_env(sandbox, fake_llm + "/v1"), log_dir=sandbox.dir, env_of=metrics)
    try:
        mesh.operator_key = await provision(mesh.env)
        await start_mesh(mesh)
        yield mesh
    finally:
        mesh.stop_all()
        print(f"mesh logs: {sandbox.dir}")


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous client: turns and the sessions it starts, nothing more."""
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def mesh_operator(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the auth-off mesh with its bootstrap (operator) key."""
    async with httpx.AsyncClient(
        base_url=mesh.base_url, timeout=30, headers=mesh.operator_headers
    ) as client:
        yield client
