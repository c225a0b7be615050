"""The benchmarks' load client: what it sends, and how it judges an answer complete.

The servers here are loopback stand-ins: the real fake upstream (OpenAI streaming, as
LiteLLM proxy answers), and tiny servers speaking the gateway's session API and its chat
completions with the frames a test chooses (the gateway may coalesce several tokens into
one frame). The report's checks (bench/peer.py) are pure; the storage check runs its
query on a Postgres database of the test sandbox's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from bench import peer
from bench.accounting import count_stored
from bench.load import ChatClient, Client, HttpError, LoadRun, TurnResult
from testbed.mesh import start_fake_upstream
from testbed.sandbox import Sandbox

TOKENS = [f"tok{i} " for i in range(20)]


@dataclass
class FakeGateway:
    """POST /v1/session/message and GET /v1/session/<id>/events, in either order."""

    frames: list[str]  # the text of each assistant.delta frame
    port: int = 0
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (request line, headers)
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                line, *rest = head.split("\r\n")
                headers = {
                    k.lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)
                }
                self.seen.append((line, headers))
                if line.startswith("POST"):
                    await reader.readexactly(int(headers["content-length"]))
                    body = json.dumps({"session_id": "s", "event_id": "turn-1"}).encode()
                    writer.write(
                        b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    self.posted.set()
                else:
                    await self.stream(writer)
                    return
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        await self.posted.wait()  # the turn's events exist once it was posted
        events = [("assistant.delta", {"seq": i, "text": t}) for i, t in enumerate(self.frames)]
        for kind, data in [*events, ("assistant.final", {"text": "".join(self.frames)})]:
            block = f"event: {kind}\nid: 1-{len(kind)}\ndata: {json.dumps(data)}\n\n".encode()
            writer.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway(frames=["".join(TOKENS[:7]), "".join(TOKENS[7:15]), "".join(TOKENS[15:])])
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    async with server:
        yield fake


async def one_turn(client: Client) -> TurnResult:
    result = TurnResult(at_s=0, measured=True)
    await client.turn(result, "s", time.perf_counter())
    return result


async def test_coalesced_frames_count_every_token(gateway: FakeGateway) -> None:
    client = Client("127.0.0.1", gateway.port)
    result = await one_turn(client)
    await client.close()
    assert (result.tokens, result.deltas) == (20, 3)
    assert result.ttft_ms is not None and result.total_ms is not None
    run = LoadRun(rate=1, warmup_s=0, duration_s=1, turns=[result])
    result.ok, result.end_s = True, 0.5
    assert run.summary(50, 2000)["short_answers"] == 0


async def test_a_missing_token_is_a_short_answer(gateway: FakeGateway) -> None:
    gateway.frames = ["".join(TOKENS[:19])]  # tok19 never comes
    client = Client("127.0.0.1", gateway.port)
    result = await one_turn(client)
    await client.close()
    result.ok, result.end_s = True, 0.5
    run = LoadRun(rate=1, warmup_s=0, duration_s=1, turns=[result])
    assert run.summary(50, 2000)["short_answers"] == 1


async def test_anonymous_turns_open_the_stream_first(gateway: FakeGateway) -> None:
    client = Client("127.0.0.1", gateway.port)
    await one_turn(client)
    await client.close()
    assert [line.split()[0] for line, _ in gateway.seen] == ["GET", "POST"]
    assert all("authorization" not in headers for _, headers in gateway.seen)


async def test_a_key_goes_on_every_request_and_posts_first(gateway: FakeGateway) -> None:
    client = Client("127.0.0.1", gateway.port, {"Authorization": "Bearer sk_test"})
    result = await one_turn(client)
    await client.close()
    assert [line.split()[0] for line, _ in gateway.seen] == ["POST", "GET"]
    assert {h.get("authorization") for _, h in gateway.seen} == {"Bearer sk_test"}
    assert result.tokens == 20 and result.turn_id == "turn-1"
    assert result.session_id == "s"  # as the gateway answered the POST


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    proc, url = start_fake_upstream()
    yield int(url.rsplit(":", 1)[1])
    proc.terminate()
    proc.wait(10)


async def test_chat_client_reads_openai_streams_on_one_connection(upstream: int) -> None:
    client = ChatClient("127.0.0.1", upstream, {"authorization": "Bearer sk-peer"})
    first = await one_turn(client)
    second = await one_turn(client)
    assert len(client._idle) == 1  # the second turn reused the first one's connection
    await client.close()
    for result in (first, second):
        assert (result.tokens, result.deltas) == (20, 20)
        assert result.ttft_ms is not None and result.total_ms is not None
        assert result.ttft_ms >= 45  # the fake's 50 ms to the first token
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream}") as http:
        sent = (await http.get("/admin/requests", params={"contains": "hello bench"})).json()
    assert [h.get("authorization") for h in sent["headers"]] == ["Bearer sk-peer"] * 2


async def test_chat_client_asks_for_usage_and_sees_it(upstream: int) -> None:
    client = ChatClient("127.0.0.1", upstream, model="fake", include_usage=True)
    result = await one_turn(client)
    await client.close()
    assert result.usage and result.tokens == 20
    assert result.turn_id is None  # the fake's completion id is not a gateway's
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream}") as http:
        sent = (await http.get("/admin/requests", params={"contains": "hello bench"})).json()
    bodies = sent["requests"]
    assert bodies[-1]["stream_options"] == {"include_usage": True}
    assert bodies[-1]["model"] == "fake" and bodies[-1]["stream"] is True


@dataclass
class FakeChatGateway:
    """`POST /v1/chat/completions` as the gateway streams it: `X-Session-Id`, a role chunk
    before any text, `chatcmpl-<turn id>`, then the text frames (or an error frame), the
    usage chunk, `[DONE]`."""

    frames: list[str]
    error_after: int | None = None  # an error frame instead of the frames from this one
    first_text_delay_s: float = 0.0
    port: int = 0
    bodies: list[dict[str, object]] = field(default_factory=list)

    def chunk(self, delta: dict[str, object], usage: bool = False) -> dict[str, object]:
        body: dict[str, object] = {
            "id": "chatcmpl-turn-7",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "fake",
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 20} if usage else None,
        }
        return body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                headers = {
                    k.lower(): v.strip()
                    for k, _, v in (h.partition(":") for h in head.split("\r\n")[1:] if h)
                }
                self.bodies.append(
                    json.loads(await reader.readexactly(int(headers["content-length"])))
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"x-session-id: sess-7\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                frames = [self.chunk({"role": "assistant", "content": ""})]
                self.send(writer, frames)
                await writer.drain()
                await asyncio.sleep(self.first_text_delay_s)  # the model's first token
                texts = self.frames[: self.error_after]
                blocks = [self.chunk({"content": t}) for t in texts]
                if self.error_after is not None:
                    blocks.append({"error": {"message": "boom", "type": "server_error"}})
                else:
                    blocks += [self.chunk({}, usage=True)]
                self.send(writer, blocks)
                if self.error_after is None:
                    writer.write(b"e\r\ndata: [DONE]\n\n\r\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    @staticmethod
    def send(writer: asyncio.StreamWriter, payloads: list[dict[str, object]]) -> None:
        for payload in payloads:
            block = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
            writer.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")


@pytest.fixture
async def chat_gateway() -> AsyncIterator[FakeChatGateway]:
    fake = FakeChatGateway(frames=["".join(TOKENS[:7]), "".join(TOKENS[7:])])
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    async with server:
        yield fake


async def test_chat_client_keeps_the_gateway_turn_and_session(
    chat_gateway: FakeChatGateway,
) -> None:
    chat_gateway.first_text_delay_s = 0.05
    client = ChatClient(
        "127.0.0.1", chat_gateway.port, {"authorization": "Bearer sk_x"}, include_usage=True
    )
    result = await one_turn(client)
    await client.close()
    assert (result.turn_id, result.session_id) == ("turn-7", "sess-7")
    assert (result.tokens, result.deltas, result.usage) == (20, 2, True)
    # TTFT is the first text, not the role chunk that comes before it.
    assert result.ttft_ms is not None and result.ttft_ms >= 45
    assert chat_gateway.bodies[0]["stream_options"] == {"include_usage": True}


async def test_chat_error_frame_fails_the_turn_but_keeps_its_id(
    chat_gateway: FakeChatGateway,
) -> None:
    chat_gateway.error_after = 1
    client = ChatClient("127.0.0.1", chat_gateway.port)
    result = TurnResult(at_s=0, measured=True)
    with pytest.raises(HttpError, match="error_event"):
        await client.turn(result, "s", time.perf_counter())
    await client.close()
    assert result.turn_id == "turn-7" and result.detail and "boom" in result.detail


def test_side_order_rotates_so_each_side_takes_each_place() -> None:
    sides = [peer.Side(n, Client("127.0.0.1", 1), set) for n in ("a", "b", "c")]
    orders = [[s.name for s in peer.order_at(sides, i)] for i in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert {o[place] for o in orders for place in range(3)} == {"a", "b", "c"}
    two = sides[:2]
    assert [[s.name for s in peer.order_at(two, i)] for i in range(3)] == [
        ["a", "b"],
        ["b", "a"],
        ["a", "b"],
    ]


def _side_result(**overrides: object) -> dict[str, object]:
    result: dict[str, object] = {
        "ok": 10,
        "short_answers": 0,
        "usage_chunks": 10,
        "without_turn_id": 0,
        "storage": {"total": 10, "stored": 10, "in_session": 10, "with_session": 10},
    }
    return result | overrides


def test_failures_cover_the_chat_side() -> None:
    clean = {"rate": 10.0, peer.SOMA: _side_result(), peer.SOMA_CHAT: _side_result()}
    assert peer.failures({"rates": [clean]}) == []
    bad = {
        "rate": 10.0,
        peer.SOMA: _side_result(),
        peer.SOMA_CHAT: _side_result(
            usage_chunks=9,
            without_turn_id=1,
            storage={"total": 10, "stored": 9, "in_session": 8, "with_session": 10},
        ),
        peer.LITELLM: {"ok": 10, "short_answers": 2, "usage_chunks": 0},
    }
    found = peer.failures({"rates": [bad]})
    assert all(f.startswith(("soma_chat at 10/s", "litellm at 10/s")) for f in found)
    assert len(found) == 5  # unstored, other session, no turn id, no usage, short (LiteLLM)
    assert any("usage chunk" in f for f in found) and any("session" in f for f in found)


async def test_storage_check_needs_the_session_the_client_was_told(sandbox: Sandbox) -> None:
    """The query on real Postgres, in a schema of its own (the sandbox's database is the
    test mesh's too)."""
    conn = await asyncpg.connect(sandbox.postgres_dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS bench_check CASCADE; CREATE SCHEMA bench_check")
        await conn.execute(
            "CREATE TABLE bench_check.turns"
            " (turn_id text PRIMARY KEY, session_id text, status text)"
        )
        await conn.executemany(
            "INSERT INTO bench_check.turns VALUES ($1, $2, $3)",
            [("t1", "s1", "completed"), ("t2", "s2", "completed"), ("t3", "s9", "error")],
        )
        dsn = sandbox.postgres_dsn + ("&" if "?" in sandbox.postgres_dsn else "?")
        found = await count_stored(
            dsn + "search_path=bench_check",
            ["t1", "t2", "t3", "t4"],
            timeout_s=0,
            sessions={"t1": "s1", "t2": "s2", "t3": "s3"},
        )
        assert found == {
            "total": 4,
            "stored": 3,
            "completed": 2,
            "in_session": 2,  # t3 is stored, but under another session
            "with_session": 3,
        }
        assert await count_stored(dsn + "search_path=bench_check", ["t1"], timeout_s=0) == {
            "total": 1,
            "stored": 1,
            "completed": 1,
        }
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS bench_check CASCADE")
        await conn.close()
