"""Fixtures shared by the integration and end-to-end tests.

They need the real infrastructure that `make test` starts (deploy/infra.sh); the mesh
itself (ingress + workers) is started here in a Kafka namespace of its own, against a
fake OpenAI-compatible upstream on loopback.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from tests.mesh import Mesh, delete_topics, mesh_env, start_fake_upstream, start_mesh
from tests.stack_guard import snapshot


@pytest.fixture(scope="session")
def settings() -> CommonSettings:
    return CommonSettings()


@pytest.fixture(scope="session", autouse=True)
async def running_stack_untouched(settings: CommonSettings) -> AsyncIterator[None]:
    """The stack `make up` runs here is exactly as it was once the suite is done."""
    soma_home = Path(os.environ.get("SOMA_HOME", Path.home() / ".cache" / "soma-gateway"))
    before = await snapshot(settings, soma_home)
    yield
    after = await snapshot(settings, soma_home)
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
async def mesh(fake_llm: str, settings: CommonSettings) -> AsyncIterator[Mesh]:
    namespace = f"test{uuid.uuid4().hex[:8]}"
    log_dir = Path(tempfile.mkdtemp(prefix="soma-mesh-"))
    mesh = Mesh(env=mesh_env(namespace, fake_llm + "/v1", settings), log_dir=log_dir)
    try:
        await start_mesh(mesh)
        yield mesh
    finally:
        mesh.stop_all()
        await delete_topics(settings.kafka_bootstrap_servers, namespace)
        print(f"mesh logs: {log_dir}")


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        yield client
