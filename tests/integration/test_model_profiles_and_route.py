"""Model profiles API and routing from live signals (breaker, latency, errors, cost)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from redis.asyncio import Redis

from adapters.deployments import DeploymentHealth
from testbed.mesh import Mesh
from testbed.sandbox import Sandbox


@pytest.fixture
def client(mesh_operator: httpx.AsyncClient) -> httpx.AsyncClient:
    """Profiles serve every tenant, so changing them is an operator's: this module's
    client holds the mesh's operator key (anonymous callers hold `turns` only)."""
    return mesh_operator


async def test_profile_lifecycle_and_validation(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str
) -> None:
    mode = f"m{uuid.uuid4().hex[:8]}"
    body = {
        "role": "writer",
        "deployment_mode": mode,
        "model": "openai/gpt-4o-mini",
        "base_url": fake_llm + "/v1",  # on loopback, allow-listed by the test mesh
        "temperature": 0.3,
        "kwargs": {"top_p": 0.9},
        "fallbacks": ["backup"],
        "cost_per_1k_tokens": 0.15,
    }
    r = await client.post("/v1/model-profiles", json=body)
    assert r.status_code == 201, r.text
    assert (await client.post("/v1/model-profiles", json=body)).status_code == 409
    r = await client.get(f"/v1/model-profiles/writer/{mode}")
    assert r.json()["kwargs"] == {"top_p": 0.9} and r.json()["fallbacks"] == ["backup"]
    r = await client.put(
        f"/v1/model-profiles/writer/{mode}", json={"model": "openai/other", "temperature": 1.0}
    )
    assert r.status_code == 200 and r.json()["model"] == "openai/other"
    listed = (await client.get("/v1/model-profiles", params={"deployment_mode": mode})).json()
    assert [p["model"] for p in listed] == ["openai/other"]
    assert (await client.delete(f"/v1/model-profiles/writer/{mode}")).status_code == 204
    assert (await client.get(f"/v1/model-profiles/writer/{mode}")).status_code == 404
    assert (await client.delete(f"/v1/model-profiles/writer/{mode}")).status_code == 404

    bad = [
        {**body, "temperature": 5},
        {**body, "base_url": "not a url"},
        {**body, "role": "has space"},
        {**body, "fallbacks": ["writer"]},
        {**body, "extra": 1},
    ]
    for item in bad:
        r = await client.post("/v1/model-profiles", json=item)
        assert r.status_code == 422, (item, r.text)


async def test_route_prefers_healthy_fast_cheap_and_skips_open_breakers(
    client: httpx.AsyncClient, mesh: Mesh, sandbox: Sandbox, fake_llm: str
) -> None:
    mode = f"r{uuid.uuid4().hex[:8]}"
    for role, cost in (("fast", 0.5), ("slow", 0.5), ("broken", 0.01)):
        r = await client.post(
            "/v1/model-profiles",
            json={
                "role": role,
                "deployment_mode": mode,
                "model": f"openai/{role}-{mode}",
                "base_url": fake_llm + "/v1",
                "cost_per_1k_tokens": cost,
            },
        )
        assert r.status_code == 201
    redis = Redis.from_url(sandbox.redis_url)
    health = DeploymentHealth(redis, sandbox.keys, threshold=2)
    try:  # a deployment is known by its profile's name, role/deployment_mode
        for _ in range(5):
            await health.succeeded(f"fast/{mode}", 40.0)
            await health.succeeded(f"slow/{mode}", 900.0)
        for _ in range(2):
            await health.failed(f"broken/{mode}")
    finally:
        await redis.aclose()
    candidates = [f"broken/{mode}", f"slow/{mode}", f"fast/{mode}"]
    r = await client.post("/v1/route", json={"candidates": candidates})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["chosen"] == f"fast/{mode}"
    by_name = {c["candidate"]: c for c in result["candidates"]}
    assert by_name[f"broken/{mode}"]["excluded"] == "circuit open"
    assert by_name[f"fast/{mode}"]["score"] > by_name[f"slow/{mode}"]["score"]
    assert result["score"] == by_name[f"fast/{mode}"]["score"]

    r = await client.post("/v1/route", json={"candidates": [f"broken/{mode}"]})
    assert r.status_code == 503
    assert "circuit open" in r.json()["detail"]["message"]
    assert (await client.post("/v1/route", json={"candidates": []})).status_code == 422
