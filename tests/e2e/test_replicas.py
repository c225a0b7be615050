"""Two replicas of every stage worker share each stage's partitions and lose nothing.

More load is met with more processes of each stage in one consumer group (12 partitions
a topic, schemas/topics.py): this is the mesh the benchmarks' `--replicas 2` runs. Two
ingress processes (each on a port of its own) take turns alike: the chaos run's mesh.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.stage_latency import scrape
from gateway_runtime.settings import CommonSettings
from testbed.mesh import REPLICATED, Mesh, mesh_env, provision, replica_names, start_mesh
from testbed.sandbox import Sandbox, free_port, open_sandbox
from tests.turns import FAKE_ANSWER, streamed_text, turn, wait_stored

TURNS = 24


@pytest.fixture(scope="module")
async def replicated(
    settings: CommonSettings, fake_llm: str
) -> AsyncIterator[tuple[Sandbox, Mesh, dict[str, int]]]:
    async with open_sandbox("replicas", settings) as sandbox:
        mesh = Mesh(env=mesh_env(sandbox, fake_llm + "/v1"), log_dir=sandbox.dir)
        ports = {name: free_port() for name in replica_names("llm_worker", 2)}
        for name, port in ports.items():
            mesh.env_of[name] = {"METRICS_PORT": str(port)}
        try:
            await provision(mesh.env)
            # returns once every group has 2 members and both ingresses are healthy
            await start_mesh(mesh, replicas=2, ingresses=2)
            yield sandbox, mesh, ports
        finally:
            mesh.stop_all()
            print(f"replicas mesh logs: {sandbox.dir}")


async def test_two_replicas_of_each_stage_share_the_turns(
    replicated: tuple[Sandbox, Mesh, dict[str, int]],
) -> None:
    sandbox, mesh, ports = replicated
    seconds = {f"{w}-2" for w in ("ingress", *REPLICATED)}
    assert {n for n in mesh.processes if n.endswith("-2")} == seconds
    urls = [mesh.ingress_url("ingress"), mesh.ingress_url("ingress-2")]
    assert urls[0] == mesh.base_url and urls[1] != urls[0]
    async with (
        httpx.AsyncClient(base_url=urls[0], timeout=30) as first,
        httpx.AsyncClient(base_url=urls[1], timeout=30) as second,
    ):
        answers = await asyncio.gather(*(turn(second if i % 2 else first) for i in range(TURNS)))
    for events in answers:
        assert events[-1].type == "assistant.final", events[-1]
        assert streamed_text(events) == FAKE_ANSWER
        assert await wait_stored(sandbox.postgres_dsn, events[-1].turn_id) == (1, 2)
    # Each llm replica handled some of the turns (sessions spread over the partitions).
    handled = {name: scrape(port, "llm").get(float("inf"), 0.0) for name, port in ports.items()}
    assert all(n > 0 for n in handled.values()), handled
    assert sum(handled.values()) >= TURNS
