"""The Rego policy's own tests (deploy/opa/gateway_test.rego), run by the real `opa`."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest

from gateway_runtime.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
SOMA_HOME = CommonSettings().soma_home


def test_rego_policy_tests_pass() -> None:
    binaries = sorted(glob.glob(str(SOMA_HOME / "bin" / "opa-*" / "opa")))
    if not binaries:
        pytest.fail("opa binary missing: run `make install` (deploy/install.sh)")
    result = subprocess.run(
        [binaries[-1], "test", "-v", str(ROOT / "deploy" / "opa")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.count("PASS") >= 9
