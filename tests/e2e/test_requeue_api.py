"""The requeue API on real dead letters: filters, pages, tenant scope, discard, replay.

The dead letters are poison records an automation might publish: bytes that are no Avro
event, with a tenant header. The policy stage dead-letters them at once (a decode error
is permanent), the index keeps them, and the API shows each to an operator and to its
own tenant's admin only.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from schemas.topics import Topics
from tests.e2e.conftest import OutageMesh
from tests.security.helpers import as_key, new_key


async def _poison(outage_mesh: OutageMesh, session_id: str, tenant: str) -> None:
    producer = AIOKafkaProducer(**outage_mesh.sandbox.kafka.client_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(
            Topics.for_namespace(outage_mesh.sandbox.namespace).requested.name,
            b"not avro",
            key=session_id.encode(),
            headers=[("tenant", tenant.encode()), ("event-id", uuid.uuid4().hex.encode())],
        )
    finally:
        await producer.stop()


async def _listed(client: httpx.AsyncClient, count: int, **params: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        while True:
            r = await client.get("/v1/requeue", params=params)
            assert r.status_code == 200, r.text
            if len(r.json()["items"]) >= count:
                return list(r.json()["items"])
            await asyncio.sleep(0.1)


async def test_requeue_filters_pages_scopes_discards_and_replays(
    outage_mesh: OutageMesh, operator: httpx.AsyncClient
) -> None:
    run = uuid.uuid4().hex[:8]
    sessions = {f"acme-1-{run}": "acme", f"acme-2-{run}": "acme", f"globex-{run}": "globex"}
    for session_id, tenant in sessions.items():
        await _poison(outage_mesh, session_id, tenant)
    letters = {}
    for session_id in sessions:
        [letter] = await _listed(operator, 1, session_id=session_id)
        letters[session_id] = letter
        assert letter["stage"] == "policy" and letter["error_type"] == "DecodeError"
        assert letter["attempts"] == 1 and letter["status"] == "pending"
        assert letter["source_topic"].endswith(".turn.requested")
    acme_1, acme_2, globex = (letters[s] for s in sessions)

    # Cursor pages: one item each, in id order, none twice.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "1", "error_type": "DecodeError", "since": acme_1["last_failed_at"]}
        r = await operator.get(
            "/v1/requeue", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert r.status_code == 200, r.text
        seen += [i["id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    mine = [letters[s]["id"] for s in sessions]
    assert [i for i in seen if i in mine] == sorted(mine, key=int)
    assert len(seen) == len(set(seen))

    # A tenant admin sees its own tenant's only; a turns-only key sees nothing.
    admin = await new_key(operator, "acme", ["turns", "admin"])
    user = await new_key(operator, "acme", ["turns"])
    async with as_key(outage_mesh.mesh.base_url, admin["secret"]) as acme_admin:
        r = await acme_admin.get("/v1/requeue", params={"since": acme_1["last_failed_at"]})
        assert {i["tenant"] for i in r.json()["items"]} == {"acme"}
        assert (await acme_admin.get(f"/v1/requeue/{globex['id']}")).status_code == 404
        assert (await acme_admin.delete(f"/v1/requeue/{globex['id']}")).status_code == 404
        assert (await acme_admin.get("/v1/requeue", params={"tenant": "globex"})).status_code == 403
        # It may discard its own: kept, for audit.
        discarded = await acme_admin.delete(f"/v1/requeue/{acme_2['id']}")
        assert discarded.status_code == 200, discarded.text
        assert discarded.json()["status"] == "discarded"
        assert discarded.json()["discarded_by"] == f"key:{admin['key_id']}"
    async with as_key(outage_mesh.mesh.base_url, user["secret"]) as acme_user:
        assert (await acme_user.get("/v1/requeue")).status_code == 403
    again = await operator.delete(f"/v1/requeue/{acme_2['id']}")
    assert again.status_code == 409 and again.json()["detail"]["code"] == "discarded"
    refused = await operator.post(f"/v1/requeue/{acme_2['id']}/resolve")
    assert refused.status_code == 409 and refused.json()["detail"]["code"] == "discarded"
    assert (await operator.get(f"/v1/requeue/{acme_2['id']}")).json()["status"] == "discarded"

    # A replay of a poison record fails again: a new dead letter that names the first.
    replayed = await operator.post(f"/v1/requeue/{acme_1['id']}/resolve")
    assert replayed.status_code == 202, replayed.text
    rows = await _listed(operator, 2, session_id=f"acme-1-{run}")
    [first, second] = rows
    assert first["status"] == "replayed" and first["replays"] == 1
    assert second["status"] == "pending" and second["replay_of"] == first["id"]
    assert second["event_id"] == first["event_id"]

    missing = await operator.get("/v1/requeue/999999999")
    assert (
        missing.status_code == 404 and missing.json()["detail"]["code"] == "dead_letter_not_found"
    )
