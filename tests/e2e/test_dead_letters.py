"""Postgres hung or stopped under a turn: dead-lettered, listed, replayed, answered once.

The outage mesh's own Postgres (tests/e2e/conftest.py) is paused (SIGSTOP of the whole
server) or stopped for longer than the policy stage's retries take (POSTGRES_TIMEOUT_S=1,
3 attempts). The turn is dead-lettered and its client told at once; once Postgres is
back, the dead-letter index lists it (API and `soma-gateway dlq list`), an operator
resolves it, and the turn's final answer arrives on the client's stream, stored once. A
second resolve is refused and starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import httpx
import pytest

from testbed.sandbox import ROOT, Sandbox
from tests.e2e.conftest import OutageMesh
from tests.security.helpers import as_key, new_key
from tests.sse import SseEvent, read_events
from tests.turns import ends_turn, logged_events, wait_stored

Outage = Literal["hung", "stopped"]


@contextlib.asynccontextmanager
async def postgres_down(sandbox: Sandbox, outage: Outage) -> AsyncIterator[None]:
    if outage == "hung":
        await sandbox.pause("postgres")
    else:
        await sandbox.stop("postgres")
    try:
        yield
    finally:
        if outage == "hung":
            await sandbox.resume("postgres")
        else:
            await sandbox.start("postgres")


async def listed(operator: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    """The session's dead letter, once the index has it (Postgres may still be waking)."""
    async with asyncio.timeout(60):
        while True:
            r = await operator.get("/v1/requeue", params={"session_id": session_id})
            if r.status_code == 200 and r.json()["items"]:
                [item] = r.json()["items"]
                return dict(item)
            assert r.status_code in (200, 503), r.text
            await asyncio.sleep(0.2)


def cli(outage_mesh: OutageMesh, *args: str) -> str:
    """`soma-gateway ...` (the console script's module) against the outage mesh."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "soma_cli",
            "--url",
            outage_mesh.mesh.base_url,
            "--key",
            outage_mesh.operator_key,
            *args,
        ],
        cwd=ROOT,
        env=outage_mesh.mesh.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("outage", ["hung", "stopped"])
async def test_postgres_outage_dead_letter_then_replay_once(
    outage: Outage,
    outage_mesh: OutageMesh,
    outage_client: httpx.AsyncClient,
    operator: httpx.AsyncClient,
) -> None:
    async with postgres_down(outage_mesh.sandbox, outage):
        # A new session (no session_id) is accepted: nobody can own it yet.
        posted = time.monotonic()
        r = await outage_client.post("/v1/session/message", json={"message": "hello"})
        answered_s = time.monotonic() - posted
        assert r.status_code == 202, r.text
        assert answered_s < 2.5, f"POST took {answered_s:.2f}s with Postgres {outage}"
        session_id, turn_id = r.json()["session_id"], r.json()["event_id"]
        url = f"/v1/session/{session_id}/events"
        # A named session may be a key's: without Postgres the anonymous caller neither
        # reads nor posts to it (fail closed), so the outcome is read from the log itself.
        await _refused_while_owners_unknown(outage_client, session_id)
        told_s = await _logged_error(outage_mesh.sandbox, session_id, turn_id) - posted
    print(f"postgres {outage}: POST {answered_s:.2f}s, turn failed in {told_s:.1f}s")
    failed = await _read_once_back(outage_client, url, ends_turn(turn_id))
    assert failed[-1].type == "error", failed[-1]
    assert failed[-1].data["data"]["code"] == "stage_failed", failed[-1]

    letter = await listed(operator, session_id)
    assert letter["event_id"] == turn_id
    assert letter["status"] == "pending" and letter["replays"] == 0
    assert letter["stage"] in ("policy", "context", "persistence"), letter
    assert letter["attempts"] == 3, letter
    assert letter["tenant"] == "default"
    assert letter["id"] in cli(
        outage_mesh, "dlq", "list", "--since", "10m", "--session", session_id
    )

    if outage == "hung":  # the API, then the CLI; each resolves once
        resolved = await operator.post(f"/v1/requeue/{letter['id']}/resolve")
        assert resolved.status_code == 202, resolved.text
        assert resolved.json()["status"] == "replayed" and resolved.json()["replays"] == 1
    else:
        out = cli(outage_mesh, "dlq", "replay", "--all", "--session", session_id, "--yes")
        assert "replayed 1" in out, out
        shown = (await operator.get(f"/v1/requeue/{letter['id']}")).json()
        assert shown["status"] == "replayed" and shown["replays"] == 1, shown
    async with asyncio.timeout(60):
        answered = await read_events(
            outage_client, url, ends_turn(turn_id), last_event_id=failed[-1].id
        )
    assert answered[-1].type == "assistant.final", answered[-1]
    assert await wait_stored(outage_mesh.dsn, turn_id) == (1, 2)

    again = await operator.post(f"/v1/requeue/{letter['id']}/resolve")
    assert again.status_code == 409 and again.json()["detail"]["code"] == "already_replayed"
    assert "already_replayed" in cli(outage_mesh, "dlq", "replay", letter["id"], "--yes")
    # A later turn of the session ends after anything the second resolve could have started.
    r = await outage_client.post(
        "/v1/session/message", json={"session_id": session_id, "message": "and then?"}
    )
    async with asyncio.timeout(30):
        await read_events(outage_client, url, ends_turn(r.json()["event_id"]))
    finals = [
        e
        for e in await logged_events(outage_mesh.sandbox, session_id)
        if e["turn_id"] == turn_id and e["type"] == "assistant.final"
    ]
    assert len(finals) == 1, finals
    assert await wait_stored(outage_mesh.dsn, turn_id) == (1, 2)


async def _refused_while_owners_unknown(client: httpx.AsyncClient, session_id: str) -> None:
    """503 session_store_unavailable with Retry-After, for reading and for posting."""
    async with client.stream("GET", f"/v1/session/{session_id}/events") as read:
        assert read.status_code == 503, "read a named session while its owner is unknown"
        await read.aread()  # (a granted stream never ends: read only a refusal)
    posted = await client.post(
        "/v1/session/message", json={"session_id": session_id, "message": "again"}
    )
    for r in (read, posted):
        assert r.status_code == 503, r.text
        assert r.json()["detail"]["code"] == "session_store_unavailable"
        assert int(r.headers["Retry-After"]) > 0


async def _read_once_back(
    client: httpx.AsyncClient, url: str, until: Callable[[SseEvent], bool]
) -> list[SseEvent]:
    """The session's events, once the ingress can tell who owns it again (Postgres is
    back, but its first answers may still fail: 503 session_store_unavailable)."""
    async with asyncio.timeout(60):
        while True:
            try:
                return await read_events(client, url, until)
            except httpx.HTTPStatusError as exc:
                assert exc.response.status_code == 503, exc
                await asyncio.sleep(0.2)


async def _logged_error(sandbox: Sandbox, session_id: str, turn_id: str) -> float:
    """When (time.monotonic()) the turn's `error` event is in the session's Redis log."""
    async with asyncio.timeout(60):
        while True:
            for event in await logged_events(sandbox, session_id):
                if event["turn_id"] == turn_id and event["type"] == "error":
                    assert event["data"]["code"] == "stage_failed", event
                    return time.monotonic()
            await asyncio.sleep(0.1)


async def test_a_keyed_post_answers_within_2s_while_postgres_hangs(
    outage_mesh: OutageMesh, operator: httpx.AsyncClient
) -> None:
    """Authentication (an uncached key), the session claim (OpenFGA, on the same hung
    Postgres) and the Idempotency-Key all wait on Postgres: the answer still comes in time,
    a 503 that says when to retry, or a 202 for what was decided from caches."""
    key = await new_key(operator, "acme", ["turns"])
    async with as_key(outage_mesh.mesh.base_url, key["secret"]) as client:
        async with postgres_down(outage_mesh.sandbox, "hung"):
            timings = []
            for i in range(3):
                posted = time.monotonic()
                r = await client.post(
                    "/v1/session/message",
                    json={"message": f"hello {i}"},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                timings.append(time.monotonic() - posted)
                assert r.status_code in (202, 503), r.text
                if r.status_code == 503:
                    assert int(r.headers["Retry-After"]) > 0
        print(f"keyed POSTs with Postgres hung: {[round(t, 2) for t in timings]} s")
        assert max(timings) <= 2.3


async def test_a_stream_keeps_its_keep_alives_while_postgres_and_redis_hang(
    outage_mesh: OutageMesh, outage_client: httpx.AsyncClient
) -> None:
    """The stream's reads hang on both logs until their timeouts; keep-alives still come
    every SSE_KEEPALIVE_S (1 s here), so neither the client nor a proxy gives up."""
    sandbox = outage_mesh.sandbox
    ticks: list[float] = []
    async with outage_client.stream("GET", f"/v1/session/ka-{uuid.uuid4().hex}/events") as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        await sandbox.pause("postgres")
        await sandbox.pause("redis")
        try:
            paused = time.monotonic()
            async with asyncio.timeout(10):
                async for line in lines:
                    if line.startswith(": keep-alive"):
                        ticks.append(time.monotonic() - paused)
                        if len(ticks) == 4:
                            break
        finally:
            await sandbox.resume("redis")
            await sandbox.resume("postgres")
    print(f"keep-alives with Postgres and Redis hung at {[round(t, 2) for t in ticks]} s")
    gaps = [b - a for a, b in zip([0.0, *ticks], ticks, strict=False)]
    assert max(gaps) < 1.6, gaps  # SSE_KEEPALIVE_S=1
