"""Turns an automation publishes straight to Kafka run as that automation, in its tenant.

The automation gets its credentials from the CLI (`soma-gateway automation add`) as an
operator would give them; it may write only its inbound topic (the broker's ACLs, see
tests/security/test_kafka_boundary.py). Here: what the policy stage makes of what it
writes there. A record naming another principal or tenant, or another tenant's session,
is dead-lettered under the automation's tenant, and no session hears of it.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from gateway_runtime import kafka_credentials as creds
from gateway_runtime.kafka import KafkaConnection
from schemas.codec import Codec
from schemas.events import TurnRequested
from testbed.mesh import ROOT, Mesh
from tests.sse import read_events
from tests.turns import ends_turn

TENANT = "acme"


@pytest.fixture(scope="module")
async def bot(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> creds.Credentials:
    name = f"bot-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("automation") / "bot.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "soma_cli",
        "automation",
        "add",
        name,
        "--tenant",
        TENANT,
        "--out",
        str(out),
        cwd=ROOT,
        env={**mesh.env, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return creds.load(out)


@pytest.fixture
async def acme_operator(mesh_operator: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """An operator key of the automation's tenant: it reads the tenant's sessions and the
    content of its dead letters."""
    r = await mesh_operator.post(
        "/v1/keys",
        json={"label": "acme ops", "tenant": TENANT, "scopes": ["turns", "admin", "operator"]},
    )
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['secret']}"}
    async with httpx.AsyncClient(base_url=str(mesh_operator.base_url), headers=headers) as c:
        yield c


async def _publish(bot: creds.Credentials, *events: TurnRequested) -> None:
    assert bot.topic is not None
    producer = AIOKafkaProducer(**KafkaConnection.from_credentials(bot).client_kwargs(), acks="all")
    await producer.start()
    try:
        for event in events:
            record = Codec().encode(event)
            await producer.send_and_wait(
                bot.topic, record.value, key=record.key, headers=record.headers
            )
    finally:
        await producer.stop()


def _turn(session_id: str, **fields: Any) -> TurnRequested:
    values: dict[str, Any] = {"tenant": TENANT, **fields}
    return TurnRequested(uuid.uuid4().hex, session_id, "hello", int(time.time() * 1000), **values)


async def test_an_automations_turn_runs_as_the_automation_in_its_tenant(
    bot: creds.Credentials, acme_operator: httpx.AsyncClient
) -> None:
    session_id = f"bot-{uuid.uuid4().hex}"
    event = _turn(session_id)  # no principal: the topic says who sent it
    await _publish(bot, event)
    async with asyncio.timeout(60):
        while True:  # the session exists once the policy stage has claimed it
            try:
                events = await read_events(
                    acme_operator, f"/v1/session/{session_id}/events", ends_turn(event.event_id)
                )
                break
            except httpx.HTTPStatusError as exc:
                assert exc.response.status_code == 404, exc
                await asyncio.sleep(0.2)
    accepted = next(e for e in events if e.type == "turn.accepted")
    assert accepted.data["data"]["principal"] == f"automation:{bot.username.split('-', 1)[1]}"
    assert events[-1].type == "assistant.final"


async def test_forged_records_are_dead_lettered_in_the_automations_tenant_silently(
    bot: creds.Credentials,
    mesh: Mesh,
    mesh_operator: httpx.AsyncClient,
    acme_operator: httpx.AsyncClient,
) -> None:
    # A session of tenant `default`, claimed by the bootstrap key.
    victim = f"victim-{uuid.uuid4().hex}"
    r = await mesh_operator.post(
        "/v1/session/message", json={"session_id": victim, "message": "mine"}
    )
    assert r.status_code == 202, r.text
    owners_turn = r.json()["event_id"]
    key_id = mesh.operator_key.split("_")[1]
    forged = {
        "forged principal": _turn(f"f-{uuid.uuid4().hex}", principal=f"key:{key_id}"),
        "forged tenant": _turn(f"f-{uuid.uuid4().hex}", tenant="globex"),
        "session of another tenant": _turn(victim),
    }
    await _publish(bot, *forged.values())

    for reason, event in forged.items():
        letter = await _dead_letter(acme_operator, event)
        assert letter["tenant"] == TENANT, "the automation's tenant, not the record's word"
        assert letter["stage"] == "policy"
        assert reason in letter["error_message"]
    # Nothing of the forged turns reached the victim's stream: read up to a turn of the
    # owner's posted after they were all dead-lettered (a notification comes before that).
    r = await mesh_operator.post(
        "/v1/session/message", json={"session_id": victim, "message": "still mine"}
    )
    assert r.status_code == 202, r.text
    last = r.json()["event_id"]
    async with asyncio.timeout(30):
        seen = await read_events(mesh_operator, f"/v1/session/{victim}/events", ends_turn(last))
    assert {e.turn_id for e in seen} == {owners_turn, last}


async def _dead_letter(operator: httpx.AsyncClient, event: TurnRequested) -> dict[str, Any]:
    """The indexed dead letter of `event`, once the index has it."""
    async with asyncio.timeout(30):
        while True:
            r = await operator.get("/v1/requeue", params={"session_id": event.session_id})
            assert r.status_code == 200, r.text
            mine = [i for i in r.json()["items"] if i["event_id"] == event.event_id]
            if mine:
                return dict(mine[0])
            await asyncio.sleep(0.2)  # polling the index, not standing in for readiness
