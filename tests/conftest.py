"""Fixtures shared by the integration and end-to-end tests.

They need the real infrastructure that `make test` starts (deploy/infra.sh); the mesh
itself (ingress + workers) is started here in a Kafka namespace of its own, against a
fake OpenAI-compatible upstream on loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from gateway_runtime.settings import CommonSettings
from tests.mesh import ROOT, WORKERS, Mesh, free_port, mesh_env


@pytest.fixture(scope="session")
def settings() -> CommonSettings:
    return CommonSettings()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[str]:
    """The fake upstream's base URL (50 ms to first token, 20 tokens, 5 ms apart)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_upstream", "--port", str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/v1/models", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
async def mesh(fake_llm: str, settings: CommonSettings) -> AsyncIterator[Mesh]:
    namespace = f"test{uuid.uuid4().hex[:8]}"
    env = mesh_env(namespace, fake_llm + "/v1", settings)
    log_dir = Path(tempfile.mkdtemp(prefix="soma-mesh-"))
    mesh = Mesh(env=env, log_dir=log_dir)
    provision = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway_runtime.provision", cwd=ROOT, env=env
    )
    assert await provision.wait() == 0, "provisioning failed (is `make test`'s infra up?)"
    mesh.start("ingress")
    for worker in WORKERS:
        mesh.start(worker)
    try:
        await mesh.wait_healthy()
        for stage in ("policy", "context", "llm", "persistence"):
            await mesh.wait_group_members(stage)
        yield mesh
    finally:
        mesh.stop_all()
        await _delete_topics(settings.kafka_bootstrap_servers, namespace)
        print(f"mesh logs: {log_dir}")


async def _delete_topics(bootstrap: str, namespace: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(namespace + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        yield client
