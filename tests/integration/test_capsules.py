"""The capsules proxy (`/v1/capsules`) against a fake registry that is a real HTTP server.

Three ingress processes of one authenticated mesh (no stage workers: capsules never touch
Kafka), in a sandbox of their own: one on the fake registry (timeout 1.5 s), one on a
port nobody listens on, one with no registry configured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.fake_capsule_registry import (
    BLOB_SIZE,
    DRIP_CHUNKS,
    DRIP_GAP_S,
    blob_bytes,
    start_fake_capsule_registry,
)
from testbed.mesh import Mesh, mesh_env, provision
from testbed.sandbox import free_port, open_sandbox

TIMEOUT_S = 1.5
TENANT = "caps"


@dataclass
class Capsules:
    url: str  # the ingress on the fake registry
    unreachable_url: str
    unset_url: str
    registry_url: str
    keys: dict[str, str]  # "turns", "admin" (turns + admin), "admin_only": secrets

    def client(self, key: str | None = None, url: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.AsyncClient(base_url=url or self.url, timeout=15, headers=headers)

    def seen(self, path: str) -> dict[str, Any]:
        """The last request the fake registry received on `path`."""
        seen = httpx.get(self.registry_url + "/_requests", timeout=5).json()
        return [r for r in seen if r["path"] == path][-1]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    proc, url = start_fake_capsule_registry()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
async def capsules(
    settings: CommonSettings, fake_llm: str, registry: str
) -> AsyncIterator[Capsules]:
    async with open_sandbox("caps", settings) as sandbox:
        tenants = sandbox.dir / "tenants.yaml"
        tenants.write_text(f"tenants:\n  default: {{}}\n  {TENANT}: {{}}\n")
        env = mesh_env(
            sandbox,
            fake_llm + "/v1",
            GATEWAY_REQUIRE_AUTH="true",
            TENANTS_FILE=str(tenants),
            CAPSULE_REGISTRY_URL=registry,
            CAPSULE_REGISTRY_TIMEOUT_S=str(TIMEOUT_S),
        )
        unset_env = {k: v for k, v in env.items() if k != "CAPSULE_REGISTRY_URL"}
        meshes = [
            Mesh(env=env, log_dir=sandbox.dir),
            Mesh(
                env={
                    **env,
                    "GATEWAY_PORT": str(free_port()),
                    "CAPSULE_REGISTRY_URL": f"http://127.0.0.1:{free_port()}",
                },
                log_dir=sandbox.dir,
            ),
            Mesh(env={**unset_env, "GATEWAY_PORT": str(free_port())}, log_dir=sandbox.dir),
        ]
        try:
            operator = await provision(env)
            for mesh, name in zip(
                meshes, ("ingress", "ingress_unreachable", "ingress_unset"), strict=True
            ):
                mesh.start(name, "ingress")
            await asyncio.gather(*(m.wait_healthy() for m in meshes))
            keys = {}
            async with httpx.AsyncClient(
                base_url=meshes[0].base_url,
                timeout=15,
                headers={"Authorization": f"Bearer {operator}"},
            ) as admin:
                for name, scopes in (
                    ("turns", ["turns"]),
                    ("admin", ["turns", "admin"]),
                    ("admin_only", ["admin"]),
                ):
                    r = await admin.post(
                        "/v1/keys", json={"label": name, "tenant": TENANT, "scopes": scopes}
                    )
                    assert r.status_code == 201, r.text
                    keys[name] = r.json()["secret"]
            url, unreachable_url, unset_url = (m.base_url for m in meshes)
            yield Capsules(url, unreachable_url, unset_url, registry, keys)
        finally:
            for mesh in meshes:
                mesh.stop_all()


async def test_list_passes_query_and_tenant_but_never_credentials(capsules: Capsules) -> None:
    async with capsules.client("turns") as client:
        r = await client.get(
            "/v1/capsules",
            params={"limit": 5, "cursor": "10", "tag": "db"},
            headers={"X-Soma-Tenant": "someone-else"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    page = r.json()
    assert [c["id"] for c in page["items"]] == [f"capsule-{i}" for i in range(10, 15)]
    assert page["next_cursor"] == "15"
    seen = capsules.seen("/capsules")
    assert seen["query"] == [["limit", "5"], ["cursor", "10"], ["tag", "db"]]
    assert seen["headers"]["x-soma-tenant"] == TENANT  # the caller's, not the forged one
    assert "authorization" not in seen["headers"]
    assert capsules.keys["turns"] not in str(seen)


async def test_a_binary_download_streams_through_byte_for_byte(capsules: Capsules) -> None:
    async with capsules.client("turns") as client:
        r = await client.get("/v1/capsules/blob-7")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == 'attachment; filename="blob-7.tar.gz"'
    assert r.headers["content-length"] == str(BLOB_SIZE)
    assert r.content == blob_bytes()


async def test_the_body_is_streamed_not_buffered(capsules: Capsules) -> None:
    arrivals = []
    async with capsules.client("turns") as client:
        started = time.monotonic()
        async with client.stream("GET", "/v1/capsules/drip-1") as r:
            assert r.status_code == 200
            async for _ in r.aiter_raw():
                arrivals.append(time.monotonic() - started)
    # The registry sends a chunk every DRIP_GAP_S: a buffering proxy would hand them all
    # over at the end, at once.
    assert arrivals[-1] - arrivals[0] >= (DRIP_CHUNKS - 1) * DRIP_GAP_S * 0.8, arrivals


async def test_a_registry_404_passes_through(capsules: Capsules) -> None:
    async with capsules.client("turns") as client:
        r = await client.get("/v1/capsules/missing-3")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "id": "missing-3"}


async def test_install_needs_admin_and_forwards_options(capsules: Capsules) -> None:
    async with capsules.client("admin") as client:
        r = await client.post("/v1/capsules/capsule-01/install", json={"channel": "stable"})
        assert r.status_code == 202, r.text
        assert r.json()["installed_for"] == TENANT
        assert r.json()["options"] == '{"channel":"stable"}'
        bare = await client.post("/v1/capsules/capsule-01/install")
        assert bare.status_code == 202 and bare.json()["options"] is None
        missing = await client.post("/v1/capsules/missing-1/install")
        assert missing.status_code == 404
    seen = capsules.seen("/capsules/missing-1/install")
    assert "authorization" not in seen["headers"] and seen["method"] == "POST"


async def test_scopes_are_enforced(capsules: Capsules) -> None:
    calls = [
        ("GET", "/v1/capsules"),
        ("GET", "/v1/capsules/capsule-01"),
        ("POST", "/v1/capsules/capsule-01/install"),
    ]
    async with capsules.client() as anon:
        for method, path in calls:
            r = await anon.request(method, path)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["detail"]["code"] == "missing_credentials"
    async with capsules.client("turns") as turns:
        r = await turns.post("/v1/capsules/capsule-01/install")
        assert r.status_code == 403 and r.json()["detail"]["code"] == "insufficient_scope"
    async with capsules.client("admin_only") as admin_only:
        for method, path in calls[:2]:
            r = await admin_only.request(method, path)
            assert r.status_code == 403 and r.json()["detail"]["code"] == "insufficient_scope"


async def test_a_bad_capsule_id_is_422(capsules: Capsules) -> None:
    async with capsules.client("turns") as client:
        for bad in ("-leading-dash", "a" * 129, "sp%20ace", "semi;colon"):
            r = await client.get(f"/v1/capsules/{bad}")
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"]["code"] == "invalid_request"


async def test_a_slow_registry_is_504_within_the_timeout(capsules: Capsules) -> None:
    async with capsules.client("turns") as client:
        started = time.monotonic()
        r = await client.get("/v1/capsules/slow-1")
        elapsed = time.monotonic() - started
    assert r.status_code == 504, r.text
    assert r.json()["detail"]["code"] == "capsule_registry_timeout"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 2


async def test_a_registry_failing_mid_body_cuts_the_connection(capsules: Capsules) -> None:
    """The status has gone already: a cut connection, never a short body taken as whole."""
    async with capsules.client("turns") as client:
        async with client.stream("GET", "/v1/capsules/stall-1") as r:
            assert r.status_code == 200
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await r.aread()
        # the ingress is fine afterwards
        assert (await client.get("/v1/capsules/capsule-02")).status_code == 200


async def test_an_unreachable_registry_is_502(capsules: Capsules) -> None:
    async with capsules.client("turns", capsules.unreachable_url) as client:
        r = await client.get("/v1/capsules")
    assert r.status_code == 502
    detail = r.json()["detail"]
    assert detail["code"] == "capsule_registry_unreachable"
    assert "unreachable" in detail["message"]


async def test_no_registry_configured_is_503(capsules: Capsules) -> None:
    async with capsules.client("admin", capsules.unset_url) as client:
        for method, path in (
            ("GET", "/v1/capsules"),
            ("POST", "/v1/capsules/capsule-01/install"),
        ):
            r = await client.request(method, path)
            assert r.status_code == 503, r.text
            assert r.json()["detail"]["code"] == "capsule_registry_unset"
            assert "Retry-After" in r.headers


async def test_the_routes_are_in_the_openapi_document(capsules: Capsules) -> None:
    async with capsules.client() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/v1/capsules"]) == {"get"}
    assert set(paths["/v1/capsules/{capsule_id}"]) == {"get"}
    assert set(paths["/v1/capsules/{capsule_id}/install"]) == {"post"}
    for operation in (
        paths["/v1/capsules"]["get"],
        paths["/v1/capsules/{capsule_id}/install"]["post"],
    ):
        assert {"401", "403", "502", "503", "504"} <= set(operation["responses"])
