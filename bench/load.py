"""Open-loop load for the gateway: Poisson arrivals of one-turn sessions, timed per turn.

Open loop, so a slow gateway cannot slow the arrivals down and hide its own queueing
(coordinated omission). `Client` speaks the gateway's session API (events stream, then
the message); `ChatClient` speaks OpenAI's streamed chat completions, the request a
LiteLLM proxy user sends, to the gateway's `/v1/chat/completions` and to a peer proxy
driven with the same arrivals (bench/peer.py). Both speak HTTP/1.1 over bare asyncio
streams and never parse JSON on the hot path: on a 2-core machine shared with the whole
mesh, the load generator's own CPU would otherwise be a large part of what is measured
(its CPU is reported next to the results).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

END_TYPES = (b"assistant.final", b"error")
# One token of the fake upstream's answer (`tok0 tok1 ... tok19 `, bench/fake_upstream.py).
# An answer is complete when all its tokens arrived, however many frames carried them
# (the gateway may coalesce several tokens into one `assistant.delta`).
TOKEN = re.compile(rb"tok\d+ ")
EXPECTED_TOKENS = 20  # the fake upstream's default answer
# The completion id of a gateway chat completion is `chatcmpl-<turn id>` (a LiteLLM proxy's
# is its own): read from the first chunk, so the turn can be looked up where it is stored.
COMPLETION_ID = re.compile(rb'"id":\s*"chatcmpl-([^"]+)"')
# The usage chunk (`stream_options.include_usage`): only it carries token counts.
USAGE = b'"completion_tokens"'


@dataclass(slots=True)
class TurnResult:
    """One turn as the client saw it; times in ms, `at_s` relative to the run's start."""

    at_s: float
    measured: bool
    ok: bool = False
    error: str | None = None
    detail: str | None = None
    turn_id: str | None = None
    session_id: str | None = None  # the session the gateway ran the turn in
    lag_ms: float = 0.0  # how late the generator started the turn (its own saturation)
    sse_open_ms: float | None = None
    post_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    end_s: float | None = None
    deltas: int = 0  # frames that carried answer text (info: coalescing changes it)
    tokens: int = 0  # the upstream's tokens found in that text (completeness)
    usage: bool = False  # a chat completion's stream carried its usage chunk


@dataclass
class LoadRun:
    """A run's turns plus its measured window (relative seconds)."""

    rate: float
    warmup_s: float
    duration_s: float
    turns: list[TurnResult] = field(default_factory=list)
    refused: int = 0  # arrivals dropped because the client's in-flight cap was reached

    @property
    def measured(self) -> list[TurnResult]:
        return [t for t in self.turns if t.measured]

    def summary(
        self, upstream_ttft_ms: float, p99_limit_ms: float, expected_tokens: int = EXPECTED_TOKENS
    ) -> dict[str, Any]:
        """Latency percentiles, error counts and the rates that tell a sustained load."""
        m = self.measured
        ok = [t for t in m if t.ok]
        errors: dict[str, int] = {}
        for t in m:
            if not t.ok:
                key = t.error or "unknown"
                errors[key] = errors.get(key, 0) + 1
        total = len(m) + self.refused
        end = self.warmup_s + self.duration_s
        finished_in_window = sum(
            1 for t in self.turns if t.ok and t.end_s is not None and self.warmup_s <= t.end_s < end
        )
        # The window's arrivals that ended OK by its end plus the latency limit: what the
        # sustained test counts. Completions inside the window (`completed_rate`, the
        # achieved rate) swing by several percent with the turns that straddle its edges
        # when a window holds few turns (30 at the idle floor).
        limit_s = end + p99_limit_ms / 1000
        done_in_time = sum(1 for t in ok if t.end_s is not None and t.end_s < limit_s)
        ttft = [t.ttft_ms for t in ok if t.ttft_ms is not None]
        summary: dict[str, Any] = {
            "target_rate": self.rate,
            "turns": total,
            "ok": len(ok),
            "errors": total - len(ok),
            "error_rate": (total - len(ok)) / total if total else 0.0,
            "error_kinds": errors | ({"client_cap": self.refused} if self.refused else {}),
            "error_details": sorted({t.detail for t in m if t.detail})[:5],
            "offered_rate": total / self.duration_s,
            "completed_rate": finished_in_window / self.duration_s,
            "done_in_time_rate": done_in_time / self.duration_s,
            "short_answers": sum(1 for t in ok if t.tokens != expected_tokens),
            "usage_chunks": sum(1 for t in ok if t.usage),
            "frames_per_turn": pct_dict([float(t.deltas) for t in ok]),
            "lag_ms": pct_dict([t.lag_ms for t in m]),
            "sse_open_ms": pct_dict([t.sse_open_ms for t in ok if t.sse_open_ms is not None]),
            "post_ms": pct_dict([t.post_ms for t in ok if t.post_ms is not None]),
            "ttft_ms": pct_dict(ttft),
            "gateway_ttft_ms": pct_dict([x - upstream_ttft_ms for x in ttft]),
            "total_ms": pct_dict([t.total_ms for t in ok if t.total_ms is not None]),
        }
        p99_total = summary["total_ms"].get("p99", math.inf)
        # Sustained: the gateway finished (OK) >= 95% of what arrived in the window by its
        # end plus the latency limit, with < 1% errors and no queueing blow-up (p99 total
        # under the limit), and the generator kept its schedule. Arrivals, not the target,
        # are the yardstick: a Poisson count over a few seconds is itself off the target by
        # several percent.
        summary["sustained"] = bool(
            total
            and summary["error_rate"] < 0.01
            and summary["done_in_time_rate"] >= 0.95 * summary["offered_rate"]
            and summary["lag_ms"].get("p99", math.inf) < 100
            and p99_total < p99_limit_ms
        )
        return summary


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted values."""
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pct_dict(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


class HttpError(Exception):
    """A response the turn cannot go on with; its text is the error kind."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> bytes:
    if b"content-length" in headers:
        return await reader.readexactly(int(headers[b"content-length"]))
    body = b""
    async for chunk in _chunks(reader):
        body += chunk
    return body


async def _chunks(reader: asyncio.StreamReader) -> Any:
    """The chunks of a chunked body, until the last (empty) one."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


class Client:
    """Keep-alive connections for short requests; a fresh connection per event stream.

    `headers` go on every request (e.g. `{"authorization": "Bearer sk_..."}`), so a run
    can pay for the same authentication a real caller does. A caller with credentials
    may read only sessions it has claimed, and its first message claims one: it posts
    first and then opens the events stream, which replays the turn's events from the
    start (`post_first`, by default whenever credentials are sent).
    """

    def __init__(
        self,
        host: str,
        port: int,
        headers: Mapping[str, str] | None = None,
        post_first: bool | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.headers = dict(headers or {})
        credentials = {k.lower() for k in self.headers} & {"authorization", "x-api-key"}
        self.post_first = bool(credentials) if post_first is None else post_first
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    @property
    def _extra(self) -> str:
        """The extra header lines, each ending in CRLF ("" when there are none)."""
        return "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request on a pooled connection; a stale pooled one is retried once, fresh."""
        for attempt in range(2):
            reused = bool(self._idle) and attempt == 0
            conn = self._idle.pop() if reused else await self._connect()
            reader, writer = conn
            try:
                head = (
                    f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\n{self._extra}"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status, headers = await _read_head(reader)
                data = await _read_body(reader, headers)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused:
                    continue
                raise
            except BaseException:
                writer.close()
                raise
            if headers.get(b"connection", b"").lower() == b"close":
                writer.close()
            else:
                self._idle.append(conn)
            return status, data
        raise ConnectionError("no usable connection")

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    async def turn(self, result: TurnResult, session_id: str, started: float) -> None:
        """Events stream and message (in either order); read until the turn's end event.
        TTFT and the total count from the moment the message is sent."""
        reader, writer = await self._connect()
        try:
            if not self.post_first:
                await self._open_events(reader, writer, session_id, result, started)
            body = json.dumps({"session_id": session_id, "message": "hello bench"}).encode()
            t0 = time.perf_counter()
            status, data = await self.request("POST", "/v1/session/message", body)
            result.post_ms = (time.perf_counter() - t0) * 1000
            if status // 100 != 2:
                raise HttpError(f"post_{status}")
            accepted = json.loads(data)
            result.turn_id = str(accepted["event_id"])
            result.session_id = str(accepted["session_id"])
            if self.post_first:
                await self._open_events(reader, writer, session_id, result, started)
            await self._follow(reader, result, t0)
        finally:
            writer.close()

    async def _open_events(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session_id: str,
        result: TurnResult,
        started: float,
    ) -> None:
        writer.write(
            f"GET /v1/session/{session_id}/events HTTP/1.1\r\nhost: {self.host}\r\n"
            f"{self._extra}accept: text/event-stream\r\n\r\n".encode()
        )
        status, _ = await _read_head(reader)
        if status != 200:
            raise HttpError(f"sse_{status}")
        result.sse_open_ms = (time.perf_counter() - started) * 1000

    def first_delta(self, block: bytes) -> None:
        """Called with the first `assistant.delta` event of a turn (for bench.profile)."""

    async def _follow(self, reader: asyncio.StreamReader, result: TurnResult, t0: float) -> None:
        buf = b""
        async for chunk in _chunks(reader):
            buf += chunk
            while (cut := buf.find(b"\n\n")) >= 0:
                block, buf = buf[:cut], buf[cut + 2 :]
                start = block.find(b"event: ")
                if start < 0:
                    continue  # retry: / keep-alive comment
                kind = block[start + 7 : block.find(b"\n", start)]
                if kind == b"assistant.delta":
                    result.deltas += 1
                    result.tokens += len(TOKEN.findall(block))
                    if result.ttft_ms is None:
                        result.ttft_ms = (time.perf_counter() - t0) * 1000
                        self.first_delta(block)
                elif kind in END_TYPES:
                    result.total_ms = (time.perf_counter() - t0) * 1000
                    if kind == b"error":
                        result.detail = block.decode("utf-8", "replace")[-300:]
                        raise HttpError("error_event")
                    return
        raise HttpError("stream_ended")


class ChatClient(Client):
    """OpenAI streamed chat completions on pooled keep-alive connections, as an SDK sends
    them: TTFT at the first chunk with answer text, the end at `data: [DONE]`.

    `include_usage` asks for the usage chunk (`stream_options.include_usage`, as the
    `openai` SDK's users and LiteLLM's own clients do to count tokens). The completion's
    turn id (a gateway's `chatcmpl-<turn id>`) and its `X-Session-Id` are kept, so a
    gateway's chat turns are checked in its store like the session API's.
    """

    def __init__(
        self,
        host: str,
        port: int,
        headers: Mapping[str, str] | None = None,
        model: str = "fake",
        include_usage: bool = False,
    ) -> None:
        super().__init__(host, port, headers)
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "hello bench"}],
        }
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        self.body = json.dumps(body).encode()

    async def turn(self, result: TurnResult, session_id: str, started: float) -> None:
        """One streamed completion, in no session of the client's (`session_id` is not
        sent: a gateway runs it in a new session of its own); a stale pooled connection is
        retried once, fresh."""
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {self.host}\r\n{self._extra}"
            f"content-type: application/json\r\ncontent-length: {len(self.body)}\r\n\r\n"
        ).encode()
        for attempt in range(2):
            reused = bool(self._idle) and attempt == 0
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                t0 = time.perf_counter()
                writer.write(head + self.body)
                try:
                    status, headers = await _read_head(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    if reused:
                        writer.close()
                        continue
                    raise
                result.post_ms = (time.perf_counter() - t0) * 1000
                if session := headers.get(b"x-session-id"):
                    result.session_id = session.decode()
                if status != 200:
                    result.detail = (await _read_body(reader, headers))[:300].decode(
                        "utf-8", "replace"
                    )
                    raise HttpError(f"chat_{status}")
                await self._follow_chat(reader, headers, result, t0)
            except BaseException:
                writer.close()
                raise
            if headers.get(b"connection", b"").lower() == b"close":
                writer.close()
            else:
                self._idle.append((reader, writer))
            return
        raise ConnectionError("no usable connection")

    @staticmethod
    async def _follow_chat(
        reader: asyncio.StreamReader,
        headers: dict[bytes, bytes],
        result: TurnResult,
        t0: float,
    ) -> None:
        """Read the event stream to its end (so the connection can be reused)."""
        chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        body = _chunks(reader) if chunked else _until_eof(reader)
        buf = b""
        async for chunk in body:
            buf += chunk
            while (cut := buf.find(b"\n\n")) >= 0:
                block, buf = buf[:cut], buf[cut + 2 :]
                if result.total_ms is not None:
                    continue  # after [DONE]: drain
                if block.startswith(b"data: [DONE]"):
                    result.total_ms = (time.perf_counter() - t0) * 1000
                    continue
                if block.startswith(b'data: {"error"'):
                    result.detail = block.decode("utf-8", "replace")[-300:]
                    raise HttpError("error_event")
                if found := len(TOKEN.findall(block)):
                    result.deltas += 1
                    result.tokens += found
                    if result.ttft_ms is None:
                        result.ttft_ms = (time.perf_counter() - t0) * 1000
                elif USAGE in block:
                    result.usage = True
                if result.turn_id is None and (found_id := COMPLETION_ID.search(block)):
                    result.turn_id = found_id.group(1).decode()
        if result.total_ms is None:
            raise HttpError("stream_ended")


async def _until_eof(reader: asyncio.StreamReader) -> Any:
    """A body delimited by the connection's close."""
    while data := await reader.read(65536):
        yield data


async def run_load(
    client: Client,
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    session_prefix: str,
    timeout_s: float = 10.0,
    max_in_flight: int = 2000,
    seed: int = 1,
    on_window_start: Callable[[], None] | None = None,
) -> LoadRun:
    """Poisson arrivals for warmup_s + duration_s, then wait for every turn to end."""
    rng = random.Random(seed)
    run = LoadRun(rate=rate, warmup_s=warmup_s, duration_s=duration_s)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    end = warmup_s + duration_s
    window_started = False
    at = rng.expovariate(rate)
    seq = 0
    while at < end:
        now = time.perf_counter() - start
        if not window_started and now >= warmup_s:
            window_started = True
            if on_window_start:
                on_window_start()
        if at > now:
            await asyncio.sleep(at - now)
            continue
        measured = at >= warmup_s
        if len(tasks) >= max_in_flight:
            run.refused += measured
        else:
            result = TurnResult(at_s=at, measured=measured)
            run.turns.append(result)
            seq += 1
            task = asyncio.create_task(
                _timed_turn(client, result, f"{session_prefix}-{seq}", start, timeout_s)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        at += rng.expovariate(rate)
    if not window_started and on_window_start:  # a run too short to reach the window
        on_window_start()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 5)
    for task in tasks:
        task.cancel()
    return run


async def _timed_turn(
    client: Client, result: TurnResult, session_id: str, start: float, timeout_s: float
) -> None:
    began = time.perf_counter()
    result.lag_ms = (began - start - result.at_s) * 1000
    try:
        async with asyncio.timeout(timeout_s):
            await client.turn(result, session_id, began)
        result.ok = True
    except HttpError as exc:
        result.error = str(exc)
    except TimeoutError:
        result.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        result.error = f"conn_{type(exc).__name__}"
        result.detail = repr(exc)[:200]
    result.end_s = time.perf_counter() - start


async def settle(
    client: Client, prefix: str, timeout_s: float, limit_s: float = 60, fast_ms: float = 1000
) -> tuple[float, list[str]]:
    """Wait until a lone probe turn is fast again: an overloaded run leaves a backlog that
    would otherwise be charged to the next run. The seconds it took, and the probes'
    turn ids (the gateway's turns are stored like any other)."""
    began = time.monotonic()
    ids: list[str] = []
    probes = 0
    while time.monotonic() - began < limit_s:
        probes += 1
        result = TurnResult(at_s=0, measured=False)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await client.turn(result, f"{prefix}-probe-{probes}", time.perf_counter())
        if result.turn_id:
            ids.append(result.turn_id)
        if result.total_ms is not None and result.total_ms < fast_ms:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)  # the stages behind the final event (persistence)
    return time.monotonic() - began, ids


async def upstream_ttft(host: str, port: int, samples: int = 20) -> list[float]:
    """The fake upstream's first-token time (ms) as a direct streaming client sees it."""
    body = json.dumps(
        {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    out: list[float] = []
    for _ in range(samples):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            t0 = time.perf_counter()
            writer.write(
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await _read_head(reader)
            async for chunk in _chunks(reader):
                if b'"content"' in chunk:
                    out.append((time.perf_counter() - t0) * 1000)
                    break
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return out
