"""A fake OpenAI-compatible chat upstream on loopback, for benchmarks and tests.

A bare asyncio HTTP/1.1 server (keep-alive, chunked SSE), so that the fake costs little
CPU next to the gateway it measures. Behaviour per request comes from the model name,
`fake[:mode][:ttft_ms[:tokens[:gap_ms]]]`, else from the server's defaults, which
`POST /admin/mode` changes (with `"name": "<model>"`: only for that model name).
Modes: ok, error_500, error_429, reset (the connection is cut after half the tokens),
hang (first token never comes), tool (streamed requests offering the `calculator` tool are
answered with a streamed call `calculator({"expression": "6*7"})`; once the messages hold
a `tool` result, or when no such tool is offered, the answer is text: "The result is
<the last tool result>").
`"metered": true` (set through `POST /admin/mode`) makes the reported `prompt_tokens` what
the request really sends (its messages and tools as JSON, 4 characters a token) instead of
a flat 10, as a real upstream would bill it: for tests of budgets.
Mode leak: a 500 whose body holds what an upstream must never have echoed to clients (a
credential, an internal address, a 5,000-character trace), for the tests of issue 9.
The last 2,000 chat requests are kept: `GET /admin/requests?contains=<text>` returns those
whose body holds <text>, in arrival order, so a test can check what a model was sent:
`{"requests": [<body>...], "headers": [<its headers, names in lower case>...]}`.

    python -m bench.fake_upstream --port 18099 --ttft-ms 50 --tokens 20 --gap-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True, slots=True)
class Behaviour:
    mode: str = "ok"
    ttft_ms: float = 50.0
    tokens: int = 20
    gap_ms: float = 5.0
    metered: bool = False


def prompt_tokens(request: dict[str, Any], b: Behaviour) -> int:
    """What the request's prompt is billed: a flat 10, or metered from what it sends."""
    if not b.metered:
        return 10
    sent = json.dumps(request.get("messages") or []) + json.dumps(request.get("tools") or [])
    return len(sent) // 4 + 1


class FakeUpstream:
    def __init__(self, default: Behaviour) -> None:
        self.default = default
        self.named: dict[str, Behaviour] = {}
        self.requests: dict[str, int] = {}
        self.connections = 0  # TCP connections accepted: a client that reuses them opens few
        self.received: deque[tuple[str, dict[str, Any], dict[str, str]]] = deque(maxlen=2000)

    def behaviour_for(self, model: str) -> Behaviour:
        if model in self.named:
            return self.named[model]
        parts = model.split(":")
        if parts[0] != "fake":
            return self.default
        b = self.default
        names = ("mode", "ttft_ms", "tokens", "gap_ms")
        casts = (str, float, int, float)
        for name, cast, value in zip(names, casts, parts[1:], strict=False):
            if value:
                b = replace(b, **{name: cast(value)})
        return b

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self.route(method, path, body, writer, headers):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def route(
        self,
        method: str,
        path: str,
        body: bytes,
        writer: asyncio.StreamWriter,
        headers: dict[str, str] | None = None,
    ) -> bool:
        path, _, query = path.partition("?")
        if method == "GET" and path.endswith("/models"):
            return await self.send_json(
                writer,
                200,
                {
                    "object": "list",
                    "data": [{"id": "fake", "object": "model", "owned_by": "bench"}],
                },
            )
        if method == "GET" and path == "/admin/requests":
            wanted = parse_qs(query).get("contains", [""])[0]
            matching = [(body, sent) for text, body, sent in self.received if wanted in text]
            return await self.send_json(
                writer,
                200,
                {"requests": [b for b, _ in matching], "headers": [h for _, h in matching]},
            )
        if method == "GET" and path == "/admin/stats":
            total = sum(self.requests.values())
            return await self.send_json(
                writer,
                200,
                {"requests": total, "by_model": self.requests, "connections": self.connections},
            )
        if method == "POST" and path == "/admin/mode":
            change = json.loads(body or b"{}")
            name = change.pop("name", None)
            if name:
                self.named[name] = replace(self.named.get(name, self.default), **change)
                return await self.send_json(writer, 200, {name: asdict(self.named[name])})
            self.default = replace(self.default, **change)
            return await self.send_json(writer, 200, {"default": asdict(self.default)})
        if method == "POST" and path.endswith("/chat/completions"):
            request = json.loads(body or b"{}")
            model = str(request.get("model", ""))
            self.requests[model] = self.requests.get(model, 0) + 1
            self.received.append((body.decode("utf-8", "replace"), request, headers or {}))
            return await self.complete(writer, request)
        return await self.send_json(writer, 404, {"error": {"message": f"no route {path}"}})

    async def send_json(self, writer: asyncio.StreamWriter, status: int, payload: object) -> bool:
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        return True

    async def complete(self, writer: asyncio.StreamWriter, request: dict) -> bool:
        b = self.behaviour_for(str(request.get("model", "")))
        if b.mode == "error_500":
            return await self.send_json(writer, 500, {"error": {"message": "fake upstream 500"}})
        if b.mode == "leak":
            secret = "Authorization: Bearer sk-upstream-canary-7f3a; db=postgres://admin:hunter2@10.0.0.5"
            trace = {"message": "upstream exploded", "debug": secret, "trace": "x" * 5000}
            return await self.send_json(writer, 500, {"error": trace})
        if b.mode == "error_429":
            return await self.send_json(writer, 429, {"error": {"message": "rate limited"}})
        if b.mode == "tool" and request.get("stream"):
            return await self.complete_with_tool(writer, request, b)
        if not request.get("stream"):
            await asyncio.sleep(b.ttft_ms / 1000)
            text = "".join(f"tok{i} " for i in range(b.tokens))
            return await self.send_json(
                writer,
                200,
                {
                    "id": "fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "fake",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens(request, b),
                        "completion_tokens": b.tokens,
                        "total_tokens": prompt_tokens(request, b) + b.tokens,
                    },
                },
            )
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        if b.mode == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(b.ttft_ms / 1000)
        created = int(time.time())
        for i in range(b.tokens):
            if b.mode == "reset" and i == b.tokens // 2:
                writer.transport.abort()
                return False
            if i:
                await asyncio.sleep(b.gap_ms / 1000)
            self.chunk(
                writer,
                {
                    "id": "fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": "fake",
                    "choices": [
                        {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
                    ],
                },
            )
            await writer.drain()
        self.chunk(
            writer,
            {
                "id": "fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": "fake",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            },
        )
        self.chunk(
            writer,
            {
                "id": "fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": "fake",
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens(request, b),
                    "completion_tokens": b.tokens,
                    "total_tokens": prompt_tokens(request, b) + b.tokens,
                },
            },
        )
        data = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        await writer.drain()
        return True

    async def complete_with_tool(
        self, writer: asyncio.StreamWriter, request: dict, b: Behaviour
    ) -> bool:
        """One streamed answer of the `tool` mode: a calculator call, or the text after it."""
        messages = request.get("messages") or []
        results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
        offered = {(t.get("function") or {}).get("name") for t in request.get("tools") or ()}
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await asyncio.sleep(b.ttft_ms / 1000)
        created = int(time.time())
        if "calculator" in offered and not results:
            # The call comes in pieces, as real providers stream it: id and name first,
            # then the arguments JSON in fragments.
            first = {
                "index": 0,
                "id": "call_fake_1",
                "type": "function",
                "function": {"name": "calculator", "arguments": ""},
            }
            deltas: list[dict] = [{"role": "assistant", "tool_calls": [first]}]
            for fragment in ('{"expres', 'sion": "6*', '7"}'):
                deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
            finish = "tool_calls"
        else:
            text = f"The result is {results[-1]}" if results else "No tool was offered."
            words = text.split(" ")
            deltas = [{"content": w + " "} for w in words[:-1]] + [{"content": words[-1]}]
            finish = "stop"
        for i, delta in enumerate(deltas):
            if i:
                await asyncio.sleep(b.gap_ms / 1000)
            self.chunk(writer, self.delta(created, delta, None))
            await writer.drain()
        self.chunk(writer, self.delta(created, {}, finish))
        prompt = prompt_tokens(request, b)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(deltas),
            "total_tokens": prompt + len(deltas),
        }
        self.chunk(writer, {**self.delta(created, {}, None), "choices": [], "usage": usage})
        data = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        await writer.drain()
        return True

    @staticmethod
    def delta(created: int, delta: dict, finish: str | None) -> dict:
        return {
            "id": "fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    @staticmethod
    def chunk(writer: asyncio.StreamWriter, payload: dict) -> None:
        data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))


async def serve(host: str, port: int, default: Behaviour) -> None:
    upstream = FakeUpstream(default)
    server = await asyncio.start_server(upstream.handle, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18099)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    args = parser.parse_args()
    default = Behaviour(args.mode, args.ttft_ms, args.tokens, args.gap_ms)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, default))


if __name__ == "__main__":
    main()
