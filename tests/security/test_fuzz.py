"""Schema-driven fuzzing of every endpoint of a live, authenticated ingress.

Schemathesis reads the ingress's own OpenAPI schema and sends generated valid and invalid
inputs (bodies, paths, queries, headers) to every operation: no response may be a 5xx, and
no body may leak a stack trace. The fuzzer runs against an ingress of its own, in a
sandbox of its own, with a key that can touch nothing outside its test tenant: the admin
of tenant `fuzz` (turns + admin scopes). Operator-only operations (model profiles) are
fuzzed in a second pass with the operator key, limited to those operations, so the
operator key never reaches a key endpoint.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.fake_capsule_registry import start_fake_capsule_registry
from testbed.mesh import Mesh, mesh_env, provision, start_mesh
from testbed.sandbox import open_sandbox

HOOKS = Path(__file__).with_name("fuzz_checks.py")
MAX_EXAMPLES = 12
OPERATOR_ONLY = r"^/v1/model-profiles"


@pytest.fixture(scope="module")
async def fuzz_target(settings: CommonSettings, fake_llm: str) -> AsyncIterator[tuple[Mesh, str]]:
    """An ingress (no stage workers: turns only need to reach Kafka) and its operator key."""
    async with open_sandbox("fuzz", settings) as sandbox:
        tenants = sandbox.dir / "tenants.yaml"
        tenants.write_text("tenants:\n  default: {}\n  fuzz: {}\n")
        registry, registry_url = start_fake_capsule_registry(sandbox.dir)
        env = mesh_env(
            sandbox,
            fake_llm + "/v1",
            GATEWAY_REQUIRE_AUTH="true",
            TENANTS_FILE=str(tenants),
            CAPSULE_REGISTRY_URL=registry_url,
        )
        mesh = Mesh(env=env, log_dir=sandbox.dir)
        try:
            operator_key = await provision(env)
            await start_mesh(mesh, workers=())
            yield mesh, operator_key
        finally:
            mesh.stop_all()
            registry.terminate()
            registry.wait(10)


async def _schemathesis(mesh: Mesh, key: str, report_dir: Path, *args: str) -> str:
    env = {**mesh.env, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{mesh.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error,no_stack_trace",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261129",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        # One worker: CPython 3.11 can fail "AST constructor recursion depth mismatch"
        # when two generator threads build ASTs at once (anyio's lazy importer, hypothesis).
        "--workers",
        "1",
        "--no-shrink",
        "--report-dir",
        str(report_dir),
        *args,
        cwd=report_dir,  # schemathesis keeps a cache directory in its cwd
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    return report


def _tested(report: str) -> int:
    """Operations exercised; every selected one must have been."""
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested, report[-3000:]
    assert selected.group(1) == tested.group(1), report[-3000:]
    return int(tested.group(1))


async def test_every_endpoint_survives_generated_input(
    fuzz_target: tuple[Mesh, str], tmp_path: Path
) -> None:
    mesh, operator_key = fuzz_target
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=10) as client:
        r = await client.post(
            "/v1/keys",
            json={"label": "fuzzer", "tenant": "fuzz", "scopes": ["turns", "admin"]},
            headers={"Authorization": f"Bearer {operator_key}"},
        )
        assert r.status_code == 201, r.text
        fuzzer = r.json()
    mesh.env["FUZZ_OWN_KEY_ID"] = fuzzer["key_id"]
    tenant_pass = await _schemathesis(mesh, fuzzer["secret"], tmp_path)
    operator_pass = await _schemathesis(
        mesh, operator_key, tmp_path, "--include-path-regex", OPERATOR_ONLY
    )
    # every operation of the schema was exercised (a route left out would be untested)
    total = re.search(r"Selected: \d+/(\d+)", tenant_pass)
    assert total and _tested(tenant_pass) == int(total.group(1)) >= 9
    assert _tested(operator_pass) >= 4  # the model-profile operations
    # The fuzzer could touch only its own tenant: the operator key and the tenant's own
    # admin key still work.
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=10) as client:
        for key in (operator_key, fuzzer["secret"]):
            r = await client.get("/v1/keys", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
    print("\n" + "\n".join(tenant_pass.strip().splitlines()[-6:]))
