"""Budget and quota decisions from the OPA server's HTTP API: the one adapter.

The policy is `deploy/opa/gateway.rego` (package `soma.gateway`), loaded by the OPA
server from its directory and pushed again by the provisioning; it is queried at
`POST /v1/data/soma/gateway/decision` with
`{tenant, principal, persona, model, usage, limits, request}` and answers
`{allow, reason, message, retry_after}`.

Decisions are asked over aiohttp, on every turn's path: a call costs a fifth of httpx's
CPU or less (`python -m bench.http_clients`: 0.1 against 0.6 ms one at a time, 0.08
against 1.6 twenty at a time). The provisioning's policy upload, once a start, stays on
httpx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import httpx

from gateway_runtime.errors import PolicyUnavailable
from gateway_runtime.ports import Decision
from gateway_runtime.settings import OpaSettings

POLICY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "opa"
DECISION_PATH = "/v1/data/soma/gateway/decision"


class OpaClient:
    """The `PolicyEngine` port over OPA's HTTP API."""

    def __init__(self, http: aiohttp.ClientSession, settings: OpaSettings) -> None:
        self._http = http
        self._url = settings.opa_url.rstrip("/") + DECISION_PATH
        self._timeout = aiohttp.ClientTimeout(total=settings.opa_timeout_s)

    async def decide(self, policy_input: dict[str, Any]) -> Decision:
        try:
            async with self._http.post(
                self._url, json={"input": policy_input}, timeout=self._timeout
            ) as response:
                response.raise_for_status()
                result = (await response.json()).get("result")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise PolicyUnavailable(f"policy engine unreachable: {exc!r}"[:300]) from exc
        if not isinstance(result, dict) or "allow" not in result:
            raise PolicyUnavailable("policy engine has no soma.gateway decision (not loaded?)")
        return Decision(
            allow=bool(result["allow"]),
            reason=str(result.get("reason", "")),
            message=str(result.get("message", "")),
            retry_after=float(result.get("retry_after") or 0),
        )


async def upload_policies(http: httpx.AsyncClient, opa_url: str) -> list[str]:
    """Push every policy file of POLICY_DIR to OPA under the id OPA already uses for it.

    The server loads the directory at start; pushing again makes a policy edit live
    without a restart. The existing id is reused so the module is replaced, not doubled.
    """
    base = opa_url.rstrip("/")
    listed = (await http.get(f"{base}/v1/policies")).raise_for_status().json()["result"]
    existing = [p["id"] for p in listed]
    pushed = []
    for path in sorted(POLICY_DIR.glob("*.rego")):
        if path.name.endswith("_test.rego"):
            continue  # `opa test` material, not policy
        suffix = f"deploy/opa/{path.name}"
        policy_id = next((i for i in existing if i.endswith(suffix)), suffix)
        response = await http.put(
            f"{base}/v1/policies/{policy_id}",
            content=path.read_bytes(),
            headers={"Content-Type": "text/plain"},
        )
        response.raise_for_status()
        pushed.append(policy_id)
    return pushed
