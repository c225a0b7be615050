"""A Postgres restart under answered turns: the persistence stage waits it out.

A turn that reaches the persistence stage has been answered already; dead-lettering it
because the database is restarting would leave the client's answer unstored (and tell
the client `stage_failed` after its `assistant.final`) until an operator replays it.
The chaos suite found exactly that (docs/reliability.md): 3 tries 0.2 s apart are over
before a restart is, and a fast shutdown's "terminating connection due to administrator
command" was not even taken for an outage. Here the outage mesh's own Postgres is
stopped while four turns are with the model, kept down longer than those 3 tries, and
started again: every turn is stored once, and no client hears of a failure.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx

from testbed.sandbox import Sandbox
from tests.e2e.conftest import OutageMesh
from tests.turns import logged_events, profile, sent_upstream, wait_stored

TURNS = 4
DOWN_S = 4.0  # the fault's length: well past 3 tries 0.2 s apart, well inside 10


async def test_answered_turns_wait_out_a_postgres_restart(
    outage_mesh: OutageMesh,
    outage_client: httpx.AsyncClient,
    operator: httpx.AsyncClient,
    fake_llm: str,
) -> None:
    sandbox, marker = outage_mesh.sandbox, f"pg-restart-{uuid.uuid4().hex[:8]}"
    role = marker  # its model answers 1.5 s after the request: Postgres goes down meanwhile
    await profile(operator, outage_mesh.mesh, role, "openai/fake:ok:1500", fake_llm)
    turns: dict[str, str] = {}
    for i in range(TURNS):
        session_id = f"{marker}-{i}"
        r = await outage_client.post(
            "/v1/session/message",
            json={
                "session_id": session_id,
                "message": f"{marker} {i}",
                "metadata": {"model_role": role},
            },
        )
        assert r.status_code == 202, r.text
        turns[session_id] = r.json()["event_id"]
    async with asyncio.timeout(30):  # past policy and context (which need Postgres too)
        while len(await sent_upstream(fake_llm, marker)) < TURNS:  # noqa: ASYNC110 (polled)
            await asyncio.sleep(0.05)

    await sandbox.stop("postgres")  # fast shutdown: every open connection is cut
    try:
        async with asyncio.timeout(30):  # answered while it is down
            while not all([await _final(sandbox, s, t) for s, t in turns.items()]):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(DOWN_S)  # the outage itself, not a wait for readiness
    finally:
        await sandbox.start("postgres")

    for session_id, turn_id in turns.items():
        assert await wait_stored(outage_mesh.dsn, turn_id, timeout=60) == (1, 2), session_id
        errors = [
            e
            for e in await logged_events(sandbox, session_id)
            if e["turn_id"] == turn_id and e["type"] == "error"
        ]
        assert not errors, errors
        r = await operator.get("/v1/requeue", params={"session_id": session_id})
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [], r.json()


async def _final(sandbox: Sandbox, session_id: str, turn_id: str) -> bool:
    return any(
        e["turn_id"] == turn_id and e["type"] == "assistant.final"
        for e in await logged_events(sandbox, session_id)
    )
