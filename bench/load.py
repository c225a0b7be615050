"""Open-loop load for the gateway: Poisson arrivals of one-turn sessions, timed per turn.

Open loop, so a slow gateway cannot slow the arrivals down and hide its own queueing
(coordinated omission). The client speaks HTTP/1.1 over bare asyncio streams and never
parses JSON on the hot path: on a 2-core machine shared with the whole mesh, the load
generator's own CPU would otherwise be a large part of what is measured (its CPU is
reported next to the results).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

END_TYPES = (b"assistant.final", b"error")


@dataclass(slots=True)
class TurnResult:
    """One turn as the client saw it; times in ms, `at_s` relative to the run's start."""

    at_s: float
    measured: bool
    ok: bool = False
    error: str | None = None
    detail: str | None = None
    turn_id: str | None = None
    lag_ms: float = 0.0  # how late the generator started the turn (its own saturation)
    sse_open_ms: float | None = None
    post_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    end_s: float | None = None
    deltas: int = 0


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

    def summary(self, upstream_ttft_ms: float, p99_limit_ms: float) -> dict[str, Any]:
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
            "short_answers": sum(1 for t in ok if t.deltas != 20),
            "lag_ms": pct_dict([t.lag_ms for t in m]),
            "sse_open_ms": pct_dict([t.sse_open_ms for t in ok if t.sse_open_ms is not None]),
            "post_ms": pct_dict([t.post_ms for t in ok if t.post_ms is not None]),
            "ttft_ms": pct_dict(ttft),
            "gateway_ttft_ms": pct_dict([x - upstream_ttft_ms for x in ttft]),
            "total_ms": pct_dict([t.total_ms for t in ok if t.total_ms is not None]),
        }
        p99_total = summary["total_ms"].get("p99", math.inf)
        # Sustained: the gateway finished (OK) >= 95% of what actually arrived, with < 1%
        # errors and no queueing blow-up (p99 total under the limit), and the generator kept
        # its schedule. Arrivals, not the target, are the yardstick: a Poisson count over a
        # few seconds is itself off the target by several percent.
        summary["sustained"] = bool(
            total
            and summary["error_rate"] < 0.01
            and summary["completed_rate"] >= 0.95 * summary["offered_rate"]
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
    """Keep-alive connections for short requests; a fresh connection per event stream."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request on a pooled connection; a stale pooled one is retried once, fresh."""
        for attempt in range(2):
            reused = bool(self._idle) and attempt == 0
            conn = self._idle.pop() if reused else await self._connect()
            reader, writer = conn
            try:
                head = (
                    f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\n"
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
        """Events stream first, then the message; read until the turn's end event."""
        reader, writer = await self._connect()
        try:
            writer.write(
                f"GET /v1/session/{session_id}/events HTTP/1.1\r\nhost: {self.host}\r\n"
                "accept: text/event-stream\r\n\r\n".encode()
            )
            status, _ = await _read_head(reader)
            if status != 200:
                raise HttpError(f"sse_{status}")
            result.sse_open_ms = (time.perf_counter() - started) * 1000
            body = json.dumps({"session_id": session_id, "message": "hello bench"}).encode()
            t0 = time.perf_counter()
            status, data = await self.request("POST", "/v1/session/message", body)
            result.post_ms = (time.perf_counter() - t0) * 1000
            if status // 100 != 2:
                raise HttpError(f"post_{status}")
            result.turn_id = str(json.loads(data)["event_id"])
            await self._follow(reader, result, t0)
        finally:
            writer.close()

    @staticmethod
    async def _follow(reader: asyncio.StreamReader, result: TurnResult, t0: float) -> None:
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
                    if result.ttft_ms is None:
                        result.ttft_ms = (time.perf_counter() - t0) * 1000
                elif kind in END_TYPES:
                    result.total_ms = (time.perf_counter() - t0) * 1000
                    if kind == b"error":
                        result.detail = block.decode("utf-8", "replace")[-300:]
                        raise HttpError("error_event")
                    return
        raise HttpError("stream_ended")


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
