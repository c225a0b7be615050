"""`POST /v1/chat/completions` and `/v1/models` on the wire, through a real mesh.

What a client sees byte for byte (the SSE framing, headers, OpenAI's error shape), what
the model upstream is sent (the client's messages and generation parameters, after the
session's transcript when a request joins a session), what is stored, and the failures:
refusals before the first token are HTTP statuses (429 with Retry-After), a failure
after it is a last `data: {"error": ...}` frame, and the wait is bounded (504).
The same paths with the official SDK and LangChain: test_openai_clients.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.mesh import Mesh, mesh_env, provision, start_mesh
from testbed.sandbox import Sandbox, open_sandbox
from tests.turns import FAKE_ANSWER, profile, sent_upstream, stored_messages, wait_stored

URL = "/v1/chat/completions"


def body(text: str = "hi", model: str = "dialogue", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@dataclass(frozen=True, slots=True)
class Sse:
    chunks: list[dict[str, Any]]  # every `data:` payload but [DONE], in order
    done: bool  # it ended with `data: [DONE]`
    comments: int


async def read_sse(response: httpx.Response) -> Sse:
    chunks, done, comments = [], False, 0
    async for line in response.aiter_lines():
        if line.startswith(":"):
            comments += 1
        elif line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            assert not done, "nothing may follow [DONE]"
            chunks.append(json.loads(line[len("data: ") :]))
        else:
            assert line == "", line
    return Sse(chunks, done, comments)


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error  # type: ignore[no-any-return]


# ---- the auth-off mesh (`make up`'s profile) ---------------------------------------------


async def test_a_completion_is_a_turn_answered_stored_and_named(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    r = await client.post(URL, json=body("hello there"))
    assert r.status_code == 200, r.text
    out = r.json()
    turn_id = out["id"].removeprefix("chatcmpl-")
    assert out["object"] == "chat.completion" and out["model"] == "dialogue"
    assert isinstance(out["created"], int) and out["system_fingerprint"] is None
    [choice] = out["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == FAKE_ANSWER
    assert choice["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    session_id = r.headers["x-session-id"]
    # Persisted as any turn of the session API is: the user's line and the answer.
    assert await wait_stored(sandbox.postgres_dsn, turn_id) == (1, 2)
    assert await stored_messages(sandbox.postgres_dsn, session_id=session_id) == [
        ("user", "hello there"),
        ("assistant", FAKE_ANSWER),
    ]


async def test_a_stream_is_sse_chunks_then_done(client: httpx.AsyncClient) -> None:
    request = body(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", URL, json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-session-id"]
        sse = await read_sse(r)
    assert sse.done
    chunks = sse.chunks
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "dialogue" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == FAKE_ANSWER
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}


async def test_a_session_id_joins_the_transcript(client: httpx.AsyncClient, fake_llm: str) -> None:
    marker = uuid.uuid4().hex
    first = await client.post(URL, json=body(f"remember {marker}"))
    assert first.status_code == 200, first.text
    session_id = first.headers["x-session-id"]

    second = await client.post(
        URL, json=body(f"what did I ask? {marker}-2"), headers={"X-Session-Id": session_id}
    )
    assert second.status_code == 200, second.text
    assert second.headers["x-session-id"] == session_id
    third = await client.post(
        URL, json=body(f"and now? {marker}-3", metadata={"session_id": session_id})
    )
    assert third.headers["x-session-id"] == session_id

    [sent] = await sent_upstream(fake_llm, f"{marker}-3")
    conversation = [m for m in sent if m[0] != "system"]
    assert conversation == [
        ("user", f"remember {marker}"),
        ("assistant", FAKE_ANSWER),
        ("user", f"what did I ask? {marker}-2"),
        ("assistant", FAKE_ANSWER),
        ("user", f"and now? {marker}-3"),
    ]
    # Without a session id, a request is a session of its own.
    alone = await client.post(URL, json=body(f"alone {marker}"))
    assert alone.headers["x-session-id"] != session_id
    [sent_alone] = await sent_upstream(fake_llm, f"alone {marker}")
    assert [m for m in sent_alone if m[0] != "system"] == [("user", f"alone {marker}")]


async def test_a_retry_with_the_same_idempotency_key_answers_the_same_turn(
    client: httpx.AsyncClient, fake_llm: str
) -> None:
    marker = uuid.uuid4().hex
    headers = {"Idempotency-Key": f"oa-{marker}"}
    first = await client.post(URL, json=body(marker), headers=headers)
    again = await client.post(URL, json=body(marker), headers=headers)
    assert first.status_code == again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["choices"] == first.json()["choices"]
    assert again.headers["x-session-id"] == first.headers["x-session-id"]
    assert len(await sent_upstream(fake_llm, marker)) == 1  # one turn, one model call
    other = await client.post(URL, json=body(marker + "!"), headers=headers)
    assert openai_error(other, 400)["code"] == "idempotency_key_reused"


async def test_the_clients_messages_and_parameters_reach_the_model(
    client: httpx.AsyncClient, fake_llm: str
) -> None:
    marker = uuid.uuid4().hex
    messages = [
        {"role": "system", "content": f"You are terse. {marker}"},
        {"role": "user", "content": [{"type": "text", "text": "6*7?"}]},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "and 6*8?"},
    ]
    r = await client.post(
        URL,
        json={
            "model": "dialogue",
            "messages": messages,
            "temperature": 0.3,
            "top_p": 0.5,
            "max_tokens": 100,
            "max_completion_tokens": 50,
            "stop": ["END"],
            "seed": 11,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "user": "end-user-1",
            "n": 1,
            "logprobs": None,
        },
    )
    assert r.status_code == 200, r.text
    async with httpx.AsyncClient(base_url=fake_llm) as fake:
        found = (await fake.get("/admin/requests", params={"contains": marker})).json()
    [sent] = found["requests"]
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", f"You are terse. {marker}"),
        ("user", "6*7?"),
        ("assistant", "42"),
        ("user", "and 6*8?"),
    ]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] <= 50
    assert (sent["top_p"], sent["stop"], sent["seed"]) == (0.5, ["END"], 11)
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.1, 0.2)
    assert sent["user"] == "end-user-1"


async def test_errors_have_openais_shape(client: httpx.AsyncClient) -> None:
    error = openai_error(await client.post(URL, json=body(model="gpt-4o")), 404)
    assert error == {
        "message": "The model `gpt-4o` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert openai_error(await client.post(URL, json=body(n=3)), 400)["param"] == "n"
    assert openai_error(await client.post(URL, json=body(temperature=7)), 400)["param"] == (
        "temperature"
    )
    unknown = openai_error(await client.post(URL, json=body(frobnicate=True)), 400)
    assert (unknown["param"], unknown["code"]) == ("frobnicate", "unknown_parameter")
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    r = await client.post(URL, json={"model": "dialogue", "messages": audio})
    assert openai_error(r, 400)["param"] == "messages.0.content.0.type"
    r = await client.post(URL, json=body(), headers={"X-Session-Id": "no spaces allowed"})
    assert openai_error(r, 400)["param"] == "X-Session-Id"
    assert openai_error(await client.post(URL, json={"model": "dialogue"}), 400)["param"] == (
        "messages"
    )
    bad_key = await client.post(URL, json=body(), headers={"Authorization": "Bearer sk_nope"})
    assert openai_error(bad_key, 401)["type"] == "authentication_error"
    assert bad_key.headers["www-authenticate"].startswith("Bearer")
    # /v1/models too.
    missing = await client.get("/v1/models/gpt-4o")
    assert openai_error(missing, 404)["code"] == "model_not_found"


async def test_models_are_the_roles_of_the_deployment_mode(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str
) -> None:
    await profile(client, mesh, "oa-listed", "openai/fake:listed", fake_llm)
    r = await client.get("/v1/models")
    assert r.status_code == 200, r.text
    listed = r.json()
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    assert ids[0] == "dialogue" and "oa-listed" in ids
    assert all(set(m) == {"id", "object", "created", "owned_by"} for m in listed["data"])
    # A model a profile serves resolves to its role, with or without the provider prefix.
    for name in ("oa-listed", "openai/fake:listed", "fake:listed"):
        assert (await client.get(f"/v1/models/{name}")).json()["id"] == name
        r = await client.post(URL, json=body(model=name))
        assert r.status_code == 200 and r.json()["model"] == name


async def test_a_failure_before_the_first_token_is_a_status_after_it_a_last_frame(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str
) -> None:
    await profile(client, mesh, "oa-down", "openai/fake:error_500:7", fake_llm)
    async with client.stream("POST", URL, json=body(model="oa-down", stream=True)) as r:
        await r.aread()
    error = openai_error(r, 502)
    assert (error["type"], error["code"]) == ("server_error", "llm_unavailable")
    assert int(r.headers["retry-after"]) > 0

    await profile(client, mesh, "oa-cut", "openai/fake:reset:7", fake_llm)
    async with client.stream("POST", URL, json=body(model="oa-cut", stream=True)) as r:
        assert r.status_code == 200
        sse = await read_sse(r)
    assert not sse.done
    *chunks, last = sse.chunks
    assert text_of(chunks) and FAKE_ANSWER.startswith(text_of(chunks))
    assert set(last) == {"error"}
    assert last["error"]["code"] == "llm_stream_interrupted"


# ---- a mesh with auth, budgets, rate limits and a short turn timeout --------------------


@dataclass
class LimitsMesh:
    mesh: Mesh
    admin_key: str
    run: str

    def tenant(self, name: str) -> str:
        return f"{name}-{self.run}"


TIMEOUT_S = 3


@pytest.fixture(scope="module")
async def limits(settings: CommonSettings, fake_llm: str) -> AsyncIterator[LimitsMesh]:
    async with open_sandbox("oai", settings) as sandbox:
        run = sandbox.name.rsplit("_", 1)[1]
        tenants = sandbox.dir / "tenants.yaml"
        tenants.write_text(
            f"""
tenants:
  default:
    max_output_tokens: 20
  broke-{run}:
    tokens_per_day: 5
    max_output_tokens: 20
  rate-{run}:
    rpm_per_key: 1
    max_output_tokens: 20
  picky-{run}:
    models_allow: ["openai/fake"]
    max_output_tokens: 20
"""
        )
        env = mesh_env(
            sandbox,
            fake_llm + "/v1",
            GATEWAY_REQUIRE_AUTH="true",
            TENANTS_FILE=str(tenants),
            OPENAI_TURN_TIMEOUT_S=str(TIMEOUT_S),
            SSE_KEEPALIVE_S="0.5",
            # The timeout test leaves turns on a hung upstream: stop without waiting for them.
            SHUTDOWN_GRACE_S="1",
        )
        admin_key = await provision(env)
        mesh = Mesh(env=env, log_dir=sandbox.dir)
        try:
            await start_mesh(mesh)
            yield LimitsMesh(mesh, admin_key, run)
        finally:
            mesh.stop_all()
            print(f"limits mesh logs: {sandbox.dir}")


def as_key(limits: LimitsMesh, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=limits.mesh.base_url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
    )


async def key_of(limits: LimitsMesh, tenant: str) -> httpx.AsyncClient:
    """A client with a new `turns` key of the tenant."""
    async with as_key(limits, limits.admin_key) as admin:
        r = await admin.post(
            "/v1/keys", json={"label": "oai", "tenant": limits.tenant(tenant), "scopes": ["turns"]}
        )
    assert r.status_code == 201, r.text
    return as_key(limits, r.json()["secret"])


async def put_profile(limits: LimitsMesh, role: str, model: str, fake_llm: str) -> None:
    async with as_key(limits, limits.admin_key) as operator:
        r = await operator.put(
            f"/v1/model-profiles/{role}/{limits.mesh.env['DEPLOYMENT_MODE']}",
            json={"model": model, "base_url": fake_llm + "/v1"},
        )
    assert r.status_code == 200, r.text


async def test_a_spent_budget_and_a_rate_limit_are_429_with_retry_after(
    limits: LimitsMesh,
) -> None:
    async with await key_of(limits, "broke") as broke:
        for stream in (False, True):
            r = await broke.post(URL, json=body(stream=stream))
            error = openai_error(r, 429)
            assert (error["type"], error["code"]) == ("rate_limit_error", "insufficient_quota")
            assert int(r.headers["retry-after"]) > 0
    async with await key_of(limits, "rate") as rated:
        assert (await rated.post(URL, json=body())).status_code == 200
        r = await rated.post(URL, json=body())
        assert openai_error(r, 429)["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) > 0


async def test_a_model_the_tenant_may_not_use_does_not_exist_for_it(
    limits: LimitsMesh, fake_llm: str
) -> None:
    await put_profile(limits, "oa-secret", "openai/fake:secret", fake_llm)
    async with as_key(limits, limits.admin_key) as operator:
        assert "oa-secret" in [m["id"] for m in (await operator.get("/v1/models")).json()["data"]]
    async with await key_of(limits, "picky") as picky:
        ids = [m["id"] for m in (await picky.get("/v1/models")).json()["data"]]
        assert "dialogue" in ids and "oa-secret" not in ids
        error = openai_error(await picky.post(URL, json=body(model="oa-secret")), 404)
        assert error["code"] == "model_not_found"
        assert openai_error(await picky.get("/v1/models/oa-secret"), 404)["param"] == "model"
        assert (await picky.post(URL, json=body())).status_code == 200


async def test_the_wait_for_a_turn_is_bounded(limits: LimitsMesh, fake_llm: str) -> None:
    await put_profile(limits, "oa-hang", "openai/fake:hang", fake_llm)
    await put_profile(limits, "oa-slow", "openai/fake:ok:0:1000:50", fake_llm)
    async with as_key(limits, limits.admin_key) as client:
        # No token ever comes: 504 (streamed or not: the stream has not started).
        for stream in (False, True):
            r = await client.post(URL, json=body(model="oa-hang", stream=stream))
            error = openai_error(r, 504)
            assert (error["type"], error["code"]) == ("server_error", "timeout")

        # Tokens come, too slowly to finish in time: the stream's last frame is the 504.
        async with client.stream("POST", URL, json=body(model="oa-slow", stream=True)) as r:
            assert r.status_code == 200
            sse = await read_sse(r)
        assert not sse.done
        *chunks, last = sse.chunks
        assert text_of(chunks).startswith("tok0 tok1 ")
        assert last["error"]["code"] == "timeout"
