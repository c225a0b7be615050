"""`make up`'s local profile (GATEWAY_REQUIRE_AUTH=false): callers without credentials may
post turns (`turns` scope only; keys need the bootstrap operator key), and credentials
that are sent are still enforced, so a newcomer can try keys, tenant isolation and
revocation on the default setup."""

from __future__ import annotations

import uuid

import httpx

from testbed.mesh import Mesh
from tests.security.helpers import as_key, first_of_turn, new_key, post_turn, turn_events


async def test_sent_credentials_are_enforced_even_with_auth_off(
    mesh: Mesh, client: httpx.AsyncClient, mesh_operator: httpx.AsyncClient
) -> None:
    assert mesh.env["GATEWAY_REQUIRE_AUTH"] == "false"
    own = await new_key(mesh_operator, "default")  # the bootstrap key `make up` prints
    other = await new_key(mesh_operator, "globex")
    session_id = f"local-{uuid.uuid4().hex}"
    async with (
        as_key(mesh.base_url, own["secret"]) as mine,
        as_key(mesh.base_url, other["secret"]) as theirs,
    ):
        r = await post_turn(mine, session_id, "hi")
        assert r.status_code == 202
        [*_, first] = await turn_events(mine, session_id, first_of_turn(r.json()["event_id"]))
        assert first.type == "turn.accepted"
        assert (await theirs.get(f"/v1/session/{session_id}/events")).status_code == 404
        assert (await post_turn(theirs, session_id, "x")).status_code == 404

        assert (await mesh_operator.delete(f"/v1/keys/{own['key_id']}")).status_code == 200
        r = await post_turn(mine, session_id, "after revocation")
        assert r.status_code == 401 and r.json()["detail"]["code"] == "key_revoked"
    # without credentials: turns, as before, but no key management
    assert (await post_turn(client, None, "anonymous")).status_code == 202
    r = await client.post("/v1/keys", json={"label": "x"})
    assert r.status_code == 403 and r.json()["detail"]["code"] == "insufficient_scope"
