"""The benchmarks' load client: what it sends, and how it judges an answer complete.

The servers here are loopback stand-ins: the real fake upstream (OpenAI streaming, as
LiteLLM proxy answers), and a tiny SSE server speaking the gateway's session API with
the frames a test chooses (the gateway may coalesce several tokens into one frame).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from bench.load import ChatClient, Client, LoadRun, TurnResult
from testbed.mesh import start_fake_upstream

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
