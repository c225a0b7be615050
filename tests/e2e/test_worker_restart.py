"""kill -9 of each service of a supervised mesh (as `make up` runs it): the supervisor
starts it again within 5 s, `/v1/health` says `degraded` for its stage and then `ok`, and
the turn in flight when it died ends with one final answer, stored once.

After a kill -9 the broker keeps the dead member until its session times out (10 s,
gateway_runtime/kafka.py): the restarted member's join waits for that, and the stage shows
as rebalancing (degraded) meanwhile. The times measured are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from gateway_runtime.settings import CommonSettings
from schemas.topics import Topics
from testbed.mesh import STAGE_OF, WORKERS, Mesh, mesh_env, provision, start_mesh
from testbed.sandbox import Sandbox, open_sandbox
from tests.sse import SseEvent, read_events
from tests.turns import ends_turn, logged_events, profile, wait_stored

RESTART_WITHIN_S = 5.0
DEGRADED_WITHIN_S = 20.0  # the session timeout (10 s) and a worker's start, with margin
OK_WITHIN_S = 40.0
# Workers whose module is there (the dead-letter index may not be yet): the others' stages
# have no member, so the mesh stays `degraded` because of them, and only them.
RUNNING = tuple(w for w in WORKERS if importlib.util.find_spec(w) is not None)
ABSENT = tuple(STAGE_OF[w] for w in WORKERS if w not in RUNNING)
# Killed while the turn streams from the model: the turn is then at (llm) or before
# (persistence) their stage. The others are killed just before the turn is posted.
MID_STREAM = ("llm_worker", "persistence_worker")
# The stages a turn goes through (the dead-letter index has a test of its own).
TURN_STAGES = (
    "policy_worker",
    "context_worker",
    "llm_worker",
    "tool_dispatcher",
    "persistence_worker",
)


@dataclass
class Supervised:
    mesh: Mesh
    sandbox: Sandbox
    fake_llm: str


@pytest.fixture(scope="module")
async def supervised(settings: CommonSettings, fake_llm: str) -> AsyncIterator[Supervised]:
    """A mesh of its own under the supervisor; its answers stream 20 tokens 100 ms apart."""
    async with open_sandbox("restart", settings) as sandbox:
        env = mesh_env(sandbox, fake_llm + "/v1", DEFAULT_MODEL="openai/fake:ok:50:20:100")
        mesh = Mesh(env=env, log_dir=sandbox.dir)
        try:
            mesh.operator_key = await provision(mesh.env)
            await start_mesh(mesh, workers=RUNNING, supervised=True)
            yield Supervised(mesh, sandbox, fake_llm)
        finally:
            mesh.stop_all()
            print(f"supervised mesh logs: {sandbox.dir}")


def all_ok(health: dict[str, Any]) -> bool:
    """Every running stage live; the mesh `ok` unless a stage has no worker at all."""
    stages = health["stages"]
    if any(stages[s]["status"] == "ok" for s in ABSENT):
        return False
    running_ok = all(v["status"] == "ok" for s, v in stages.items() if s not in ABSENT)
    return running_ok and health["status"] == ("degraded" if ABSENT else "ok")


async def until_health(
    client: httpx.AsyncClient,
    mesh: Mesh,
    check: Callable[[dict[str, Any]], bool],
    timeout: float,
) -> dict[str, Any]:
    """Polls /v1/health (its details: as the mesh's operator) until `check` holds on its
    body (a failed request counts as no)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = await client.get("/v1/health", timeout=5, headers=mesh.operator_headers)
            last = r.json()
            if check(last):
                return dict(last)
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never matched in {timeout}s; last: {last}")


async def post_turn(client: httpx.AsyncClient, session_id: str, role: str) -> str:
    body = {"session_id": session_id, "message": "hi", "metadata": {"model_role": role}}
    r = await client.post("/v1/session/message", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["event_id"])


@dataclass
class Recovery:
    restarted_s: float  # kill -9 → the supervisor's new process
    degraded_s: float  # kill -9 → /v1/health says degraded for the stage
    degraded_state: str  # the stage's group state it reported then
    ok_s: float  # kill -9 → every stage ok again, the new process a member

    def __str__(self) -> str:
        return (
            f"restarted {self.restarted_s:.2f}s after kill -9, health degraded at"
            f" {self.degraded_s:.1f}s (group {self.degraded_state}), ok at {self.ok_s:.1f}s"
        )


async def recover(
    client: httpx.AsyncClient, mesh: Mesh, worker: str, pid: int, killed_at: float
) -> Recovery:
    """After `worker` (pid) was killed at `killed_at`: restarted, degraded, then ok."""
    stage = STAGE_OF[worker]
    new_pid = await mesh.wait_restarted(worker, pid, timeout=RESTART_WITHIN_S)
    restarted_s = time.monotonic() - killed_at

    def degraded(health: dict[str, Any]) -> bool:
        return health["status"] == "degraded" and health["stages"][stage]["status"] != "ok"

    seen = await until_health(client, mesh, degraded, DEGRADED_WITHIN_S)
    degraded_s = time.monotonic() - killed_at

    def back(health: dict[str, Any]) -> bool:
        clients = health["stages"][stage]["clients"]
        return all_ok(health) and clients == [f"{worker}-{new_pid}"]

    await until_health(client, mesh, back, OK_WITHIN_S)
    return Recovery(
        restarted_s, degraded_s, seen["stages"][stage]["state"], time.monotonic() - killed_at
    )


@pytest.mark.parametrize("worker", [w for w in RUNNING if w in TURN_STAGES])
async def test_killed_worker_restarts_health_degrades_then_recovers_turn_ends_once(
    supervised: Supervised, worker: str
) -> None:
    mesh, stage = supervised.mesh, STAGE_OF[worker]
    session_id = f"s-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        await until_health(client, mesh, all_ok, OK_WITHIN_S)
        role = "dialogue"
        if stage == "tools":  # a turn that goes through the tool stage
            role = "calc"
            await profile(client, mesh, role, "openai/fake:tool", supervised.fake_llm)
        streaming = asyncio.Event()

        def until(turn_id: str) -> Callable[[SseEvent], bool]:
            def check(event: SseEvent) -> bool:
                if event.type == "assistant.delta" and event.data["data"]["seq"] >= 3:
                    streaming.set()
                return ends_turn(turn_id)(event)

            return check

        url = f"/v1/session/{session_id}/events"
        if worker in MID_STREAM:
            turn_id = await post_turn(client, session_id, role)
            reader = asyncio.create_task(read_events(client, url, until(turn_id)))
            await asyncio.wait_for(streaming.wait(), 30)
            killed_at, pid = time.monotonic(), mesh.kill(worker)
        else:
            killed_at, pid = time.monotonic(), mesh.kill(worker)
            turn_id = await post_turn(client, session_id, role)
            reader = asyncio.create_task(read_events(client, url, until(turn_id)))
        recovery = await recover(client, mesh, worker, pid, killed_at)
        events = await asyncio.wait_for(reader, 60)
        answered_s = time.monotonic() - killed_at

    assert events[-1].type == "assistant.final", [e.type for e in events]
    turns, messages = await wait_stored(supervised.sandbox.postgres_dsn, turn_id, timeout=60)
    assert turns == 1 and messages >= 2
    logged = await logged_events(supervised.sandbox, session_id)
    finals = [e for e in logged if e["type"] == "assistant.final"]
    assert [f["turn_id"] for f in finals] == [turn_id]
    print(f"\n{worker}: {recovery}, answer at {answered_s:.1f}s")


@pytest.mark.skipif("deadletter_index" not in RUNNING, reason="no deadletter_index module yet")
async def test_killed_deadletter_index_restarts_and_indexes_the_letter_once(
    supervised: Supervised,
) -> None:
    """Its work in flight is a dead letter: a poison turn the policy stage gives up on while
    the index is dead is indexed once it is back."""
    mesh, event_id = supervised.mesh, f"poison-{uuid.uuid4().hex}"
    topics = Topics.for_namespace(mesh.env["KAFKA_NAMESPACE"])
    headers = [("schema", b"soma.events.TurnRequested"), ("event-id", event_id.encode())]
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        await until_health(client, mesh, all_ok, OK_WITHIN_S)
        killed_at, pid = time.monotonic(), mesh.kill("deadletter_index")
        producer = AIOKafkaProducer(**mesh.kafka.client_kwargs())
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.requested.name, b"\x00\xffnot avro", key=b"poison", headers=headers
            )
        finally:
            await producer.stop()
        recovery = await recover(client, mesh, "deadletter_index", pid, killed_at)
    dsn = supervised.sandbox.postgres_dsn
    async with asyncio.timeout(30):
        while await dead_letter_rows(dsn, event_id) == 0:  # noqa: ASYNC110 - polls Postgres
            await asyncio.sleep(0.1)
    indexed_s = time.monotonic() - killed_at
    assert await dead_letter_rows(dsn, event_id) == 1
    print(f"\ndeadletter_index: {recovery}, letter indexed at {indexed_s:.1f}s")


async def dead_letter_rows(dsn: str, event_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM dead_letters WHERE event_id = $1", event_id)
        )
    finally:
        await conn.close()


async def test_killed_ingress_restarts_and_takes_turns_again(supervised: Supervised) -> None:
    mesh = supervised.mesh
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        await until_health(client, mesh, all_ok, OK_WITHIN_S)
        killed_at, pid = time.monotonic(), mesh.kill("ingress")
        await mesh.wait_restarted("ingress", pid, timeout=RESTART_WITHIN_S)
        restarted_s = time.monotonic() - killed_at
        await until_health(client, mesh, all_ok, OK_WITHIN_S)
        answering_s = time.monotonic() - killed_at
        session_id = f"s-{uuid.uuid4().hex}"
        turn_id = await post_turn(client, session_id, "dialogue")
        events = await asyncio.wait_for(
            read_events(client, f"/v1/session/{session_id}/events", ends_turn(turn_id)), 30
        )
    assert events[-1].type == "assistant.final"
    print(f"\ningress: restarted {restarted_s:.2f}s after kill -9, healthy at {answering_s:.1f}s")
