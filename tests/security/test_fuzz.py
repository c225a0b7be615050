"""Schema-driven fuzzing of every endpoint of the live, authenticated ingress.

Schemathesis reads the ingress's own OpenAPI schema and sends generated valid and invalid
inputs (bodies, paths, queries, headers) to every operation with a valid operator key:
no response may be a 5xx, and no body may leak a stack trace. The example count is
bounded so this runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.security.conftest import AuthMesh

HOOKS = Path(__file__).with_name("fuzz_checks.py")
MAX_EXAMPLES = 12


async def test_every_endpoint_survives_generated_input(auth_mesh: AuthMesh, tmp_path: Path) -> None:
    env = {**auth_mesh.mesh.env, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{auth_mesh.mesh.base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {auth_mesh.admin_key}",
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
        "--workers",
        "4",
        "--no-shrink",
        "--report-dir",
        str(tmp_path),
        cwd=tmp_path,  # schemathesis keeps a cache directory in its cwd
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    # every operation of the schema was exercised (a route left out would be untested)
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested, report[-3000:]
    assert selected.group(1) == selected.group(2) == tested.group(1), report[-3000:]
    assert int(tested.group(1)) >= 9  # session x3, keys x3, health, profiles, route at least
    print("\n" + "\n".join(report.strip().splitlines()[-6:]))
