"""Budgets that cannot be dodged: not by tool rounds, not by the transcript, not by a
made-up persona, not by a tenant missing from conf/tenants.yaml.

- Waves of 8 concurrent tool-using turns (the fake upstream's `tool` mode: a calculator
  call, then the answer, two model calls a turn; `metered`: each call billed for the
  prompt it really sends) against a daily budget, until a wave is wholly denied: the
  ledger's `used` never passes the budget by more than one turn's reservation. Each
  turn's reservation covers every request the model was sent for it (their prompts,
  estimated from the request bodies the fake recorded, plus the `max_tokens` each asked
  for), and every request asks for at most the tenant's `max_output_tokens`.
- A persona the tenant does not declare spends the tenant's shared budget: once that is
  spent, a made-up `persona_id` is denied too, and no ledger row is opened for it.
- A tenant that is not in the tenants file (here: removed after its key was minted) is
  denied `unknown_tenant`, not run with `default`'s settings.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from adapters.budgets import day_of
from tests.security.conftest import AuthMesh
from tests.security.helpers import as_key, end_of_turn, eventually, new_key, post_turn, turn_events
from tests.sse import SseEvent

CAP = 20  # the tenants' max_output_tokens
TOOLS_BUDGET = 3000
PERSONA_BUDGET = 100
WAVE = 8
MAX_WAVES = 12
ROLE = "dodge-tools"
MODEL = "fake:tool-metered"  # a name of this module's own on the shared fake


def _write(path: os.PathLike[str], text: str) -> None:
    tmp = f"{os.fspath(path)}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _edit_tenants(path: os.PathLike[str], **changes: dict[str, Any] | None) -> None:
    """Add (a mapping) or remove (None) tenants of the mesh's tenants file."""
    with open(path) as f:
        doc = yaml.safe_load(f.read())
    for name, conf in changes.items():
        if conf is None:
            doc["tenants"].pop(name, None)
        else:
            doc["tenants"][name] = conf
    _write(path, yaml.safe_dump(doc))


@pytest.fixture(scope="module")
async def tenants(auth_mesh: AuthMesh, fake_llm: str) -> AsyncIterator[dict[str, str]]:
    """This module's tenants, and a profile on the fake's tool-calling model."""
    names = {
        "tools": auth_mesh.tenant("dodge-tools"),
        "persona": auth_mesh.tenant("dodge-persona"),
        "gone": auth_mesh.tenant("dodge-gone"),
    }
    path = auth_mesh.tenants_file
    before = path.read_text()
    _edit_tenants(
        path,
        **{
            names["tools"]: {
                "tokens_per_day": TOOLS_BUDGET,
                "max_output_tokens": CAP,
                "max_context_tokens": 32,
                "tools_allow": ["calculator"],
            },
            names["persona"]: {
                "tokens_per_day": PERSONA_BUDGET,
                "max_output_tokens": CAP,
                "max_context_tokens": 16,
                "personas": {"analyst": {}},
            },
            names["gone"]: {"max_output_tokens": CAP},
        },
    )
    async with httpx.AsyncClient(
        base_url=auth_mesh.mesh.base_url,
        timeout=30,
        headers={"Authorization": f"Bearer {auth_mesh.admin_key}"},
    ) as admin:
        r = await admin.put(
            f"/v1/model-profiles/{ROLE}/{auth_mesh.mesh.env['DEPLOYMENT_MODE']}",
            json={"model": f"openai/{MODEL}", "base_url": fake_llm + "/v1"},
        )
        assert r.status_code == 200, r.text
    async with httpx.AsyncClient() as fake:
        r = await fake.post(
            fake_llm + "/admin/mode", json={"name": MODEL, "mode": "tool", "metered": True}
        )
        assert r.status_code == 200, r.text
    try:
        yield names
    finally:
        _write(path, before)


async def _ledger(mesh: AuthMesh, tenant: str) -> list[tuple[str, int, int]]:
    """(persona, used, reserved) of the tenant's buckets today."""
    conn = await asyncpg.connect(mesh.sandbox.postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT persona, used, reserved FROM budget_counters"
            " WHERE tenant = $1 AND day = $2 ORDER BY persona",
            tenant,
            day_of(time.time()),
        )
    finally:
        await conn.close()
    return [(r["persona"], int(r["used"]), int(r["reserved"])) for r in rows]


async def _settled(mesh: AuthMesh, tenant: str) -> None:
    async def nothing_held() -> bool:
        return all(reserved == 0 for _, _, reserved in await _ledger(mesh, tenant))

    await eventually(nothing_held, 30)


async def _prompt_tokens(mesh: AuthMesh, turn_ids: list[str]) -> dict[str, int]:
    """The prompt tokens each turn was stored (and settled) with."""
    conn = await asyncpg.connect(mesh.sandbox.postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT turn_id, prompt_tokens FROM turns WHERE turn_id = any($1::text[])", turn_ids
        )
    finally:
        await conn.close()
    return {r["turn_id"]: int(r["prompt_tokens"]) for r in rows}


async def _run_turn(client: httpx.AsyncClient, message: str, **extra: Any) -> list[SseEvent]:
    r = await post_turn(client, None, message, **extra)
    assert r.status_code == 202, r.text
    sid, tid = r.json()["session_id"], r.json()["event_id"]
    return await turn_events(client, sid, end_of_turn(tid), timeout=60)


def _accepted(events: list[SseEvent]) -> int | None:
    """The turn's reservation if the policy stage admitted it."""
    for e in events:
        if e.type == "turn.accepted":
            return int(e.data["data"]["reserved_tokens"])
    return None


def _estimate(body: dict[str, Any]) -> int:
    """What a request's prompt costs, estimated from its body (4 characters a token)."""
    sent = json.dumps(body.get("messages") or []) + json.dumps(body.get("tools") or [])
    return len(sent) // 4 + 1


async def _requests(fake_llm: str, marker: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as fake:
        r = await fake.get(fake_llm + "/admin/requests", params={"contains": marker})
    return list(r.json()["requests"])


async def test_concurrent_tool_turns_cannot_overspend_the_budget(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, tenants: dict[str, str], fake_llm: str
) -> None:
    tenant = tenants["tools"]
    key = await new_key(admin, tenant)
    admitted: list[tuple[str, int, str]] = []  # (marker, its reservation, turn id)
    waves = 0
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        while waves < MAX_WAVES:
            waves += 1
            markers = [f"m{uuid.uuid4().hex[:12]}" for _ in range(WAVE)]
            wave = await asyncio.gather(
                *(_run_turn(client, f"go {m}", metadata={"model_role": ROLE}) for m in markers)
            )
            won = 0
            for marker, events in zip(markers, wave, strict=True):
                held = _accepted(events)
                if held is None:
                    assert events[-1].data["data"]["code"] == "budget_exhausted", events[-1]
                    continue
                assert events[-1].type == "assistant.final", events[-1]
                assert "tool.call" in [e.type for e in events]
                admitted.append((marker, held, events[-1].turn_id))
                won += 1
            await _settled(auth_mesh, tenant)
            if not won:
                break
    assert admitted, "no tool turn was admitted at all"
    assert waves < MAX_WAVES, "the budget was never exhausted"

    [(persona, used, reserved)] = await _ledger(auth_mesh, tenant)
    largest = max(held for _, held, _ in admitted)
    print(
        f"\nbudget dodging: {len(admitted)} tool turns admitted in {waves} waves of {WAVE}; "
        f"budget {TOOLS_BUDGET}, ledger used {used}, largest reservation {largest}"
    )
    assert (persona, reserved) == ("default", 0)
    assert used - TOOLS_BUDGET <= largest, f"overspent by {used - TOOLS_BUDGET}"

    # What the model was really asked: every request capped, every turn within its hold,
    # and every round's prompt billed to the turn (the fake bills `_estimate` of a body).
    billed = await _prompt_tokens(auth_mesh, [turn_id for _, _, turn_id in admitted])
    for marker, held, turn_id in admitted:
        bodies = await _requests(fake_llm, marker)
        assert len(bodies) >= 2, marker  # the tool call, then the answer
        asked = [int(b.get("max_tokens") or b.get("max_completion_tokens") or 0) for b in bodies]
        assert all(0 < n <= CAP for n in asked), asked
        could_spend = sum(_estimate(b) for b in bodies) + sum(asked)
        assert could_spend <= held, f"turn {marker} could spend {could_spend}, held {held}"
        assert billed[turn_id] == sum(_estimate(b) for b in bodies), "a round went unbilled"


async def test_an_undeclared_persona_spends_the_shared_budget(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, tenants: dict[str, str]
) -> None:
    tenant = tenants["persona"]
    key = await new_key(admin, tenant)
    made_up = f"free-{uuid.uuid4().hex[:8]}"
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        for _ in range(10):  # spend the shared budget, one turn at a time
            events = await _run_turn(client, "go")
            await _settled(auth_mesh, tenant)
            if _accepted(events) is None:
                break
        assert events[-1].type == "error"
        assert events[-1].data["data"]["code"] == "budget_exhausted"

        events = await _run_turn(client, "go", persona_id=made_up)
        assert _accepted(events) is None, "a made-up persona got a budget of its own"
        assert events[-1].data["data"]["code"] == "budget_exhausted"

        # A declared persona keeps the budget of its own.
        events = await _run_turn(client, "go", persona_id="analyst")
        assert _accepted(events) is not None, events[-1]
        await _settled(auth_mesh, tenant)
    assert made_up not in [persona for persona, _, _ in await _ledger(auth_mesh, tenant)]


async def test_a_tenant_missing_from_the_file_is_denied_not_defaulted(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, tenants: dict[str, str]
) -> None:
    tenant = tenants["gone"]
    key = await new_key(admin, tenant)
    _edit_tenants(auth_mesh.tenants_file, **{tenant: None})
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        r = await post_turn(client, None, "go")
        if r.status_code == 202:  # the ingress left it to the policy stage
            sid, tid = r.json()["session_id"], r.json()["event_id"]
            events = await turn_events(client, sid, end_of_turn(tid))
            assert "turn.accepted" not in [e.type for e in events]
            assert events[-1].type == "error"
            assert events[-1].data["data"]["code"] == "unknown_tenant"
        else:  # or refused it before anything was published
            assert r.status_code in (401, 403), r.text
    assert await _ledger(auth_mesh, tenant) == []
