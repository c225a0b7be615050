"""The chaos run's load: open-loop one-turn sessions, each followed to its outcome.

Each arrival posts its message with an API key (several keys in turn: a principal's open
streams are capped per ingress) to one ingress, the next arrival to the other. A POST that
fails (no connection, 5xx, 429) is retried as a careful client would, on the other ingress,
with the same Idempotency-Key, for up to POST_BUDGET_S. An accepted turn is followed on
its session's SSE stream until its `assistant.final` or `error` (or until the runner gives
up on it, `drain`, a while after the load stopped); a stream that breaks is
opened again with Last-Event-ID, on the other ingress, so a killed ingress or a restarted
Redis costs the client nothing but a reconnect. Arrivals never wait for earlier turns
(open loop), so a fault shows as failures and latency, not as a lower offered rate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

POST_BUDGET_S = 15.0  # how long a client keeps retrying one POST
RETRYABLE = frozenset({429, 500, 502, 503, 504})
ANSWER = "".join(f"tok{i} " for i in range(20))  # the fake upstream's answer


@dataclass
class Turn:
    """One arrival, as the client saw it. Times are seconds since the load started."""

    seq: int
    session_id: str
    due_s: float  # when the arrival was due
    ingress: int  # the ingress posted to first; then the one that accepted
    key: int  # which API key
    accepted: bool = False
    turn_id: str | None = None
    refused: str | None = None  # why no 202 came within the POST budget
    post_attempts: int = 0
    accepted_s: float | None = None
    outcome: str | None = None  # "final" | "error"
    error_code: str | None = None
    end_s: float | None = None
    finals: set[str] = field(default_factory=set)  # SSE ids of assistant.final seen
    wrong_answer: bool = False  # a final whose text is not the fake's whole answer
    reconnects: int = 0
    retrying: int = 0  # turn.retrying events (an LLM worker crashed under the turn)


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    type: str
    data: str


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The events of an SSE response (comments and `retry:` lines skipped)."""
    event_id: str | None = None
    kind = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if kind:
                yield SseEvent(event_id, kind, "\n".join(data))
            event_id, kind, data = None, "", []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class Traffic:
    """Poisson arrivals at `rate` until `stop` is set; every turn followed to its end."""

    def __init__(self, urls: list[str], keys: list[str], rate: float) -> None:
        # No cap on connections: every followed turn holds a stream open, and a POST must
        # never queue behind them in the client (the cap would be the client's fault).
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
        self.clients = [httpx.AsyncClient(base_url=u, timeout=10, limits=limits) for u in urls]
        self.keys = keys
        self.rate = rate
        self.turns: list[Turn] = []
        self.t0 = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, stop: asyncio.Event, seed: int = 12) -> None:
        rng = random.Random(seed)
        self.t0 = time.monotonic()
        due = rng.expovariate(self.rate)
        while not stop.is_set():
            wait = due - self.now()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
                continue
            seq = len(self.turns)
            turn = Turn(seq, f"chaos-{seq}-{rng.getrandbits(32):08x}", due, seq % 2,
                        seq % len(self.keys))  # fmt: skip
            self.turns.append(turn)
            task = asyncio.create_task(self._one(turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            due += rng.expovariate(self.rate)

    async def drain(self, timeout_s: float) -> int:
        """Wait for the turns still followed (at most `timeout_s`); how many were cut off."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    def _headers(self, turn: Turn) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[turn.key]}"}

    async def _one(self, turn: Turn) -> None:
        await self._post(turn)
        if turn.accepted:
            await self._follow(turn)

    async def _post(self, turn: Turn) -> None:
        body = {"session_id": turn.session_id, "message": f"chaos turn {turn.seq}"}
        headers = {**self._headers(turn), "Idempotency-Key": f"k-{turn.session_id}"}
        deadline = time.monotonic() + POST_BUDGET_S
        at = turn.ingress
        while True:
            turn.post_attempts += 1
            pause = 0.5
            try:
                r = await self.clients[at].post(
                    "/v1/session/message", json=body, headers=headers, timeout=5
                )
            except httpx.HTTPError as exc:
                reason = f"no answer ({type(exc).__name__})"
            else:
                if r.status_code == 202:
                    turn.accepted, turn.ingress = True, at
                    turn.turn_id = str(r.json()["event_id"])
                    turn.accepted_s = self.now()
                    return
                reason = f"{r.status_code} {_code(r)}"
                if r.status_code not in RETRYABLE:
                    turn.refused, turn.end_s = reason, self.now()
                    return
                pause = min(2.0, float(r.headers.get("retry-after") or 0.5))
            if time.monotonic() + pause > deadline:
                turn.refused, turn.end_s = reason, self.now()
                return
            at = (at + 1) % len(self.clients)
            await asyncio.sleep(pause)

    async def _follow(self, turn: Turn) -> None:
        """Read the session's stream until the turn ends; reconnect (other ingress,
        Last-Event-ID) whenever the stream breaks. `drain` cancels it at the latest."""
        last_id: str | None = None
        at = turn.ingress
        while True:
            headers = self._headers(turn)
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with self.clients[at].stream(
                    "GET",
                    f"/v1/session/{turn.session_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(5, read=40),
                ) as r:
                    if r.status_code == 200:
                        async for event in sse_events(r):
                            last_id = event.id or last_id
                            if self._ends(turn, event):
                                return
            except httpx.HTTPError:
                pass
            turn.reconnects += 1
            at = (at + 1) % len(self.clients)
            await asyncio.sleep(0.5)

    def _ends(self, turn: Turn, event: SseEvent) -> bool:
        """Note what the event says of the turn; True when it ended the turn."""
        if event.type not in ("assistant.final", "error", "turn.retrying"):
            return False
        payload = json.loads(event.data)
        if payload.get("turn_id") != turn.turn_id:
            return False
        if event.type == "turn.retrying":
            turn.retrying += 1
            return False
        turn.end_s = self.now()
        if event.type == "assistant.final":
            turn.outcome = "final"
            turn.finals.add(event.id or f"no-id-{len(turn.finals)}")
            turn.wrong_answer = (payload.get("data") or {}).get("text") != ANSWER
        else:
            turn.outcome = "error"
            turn.error_code = str((payload.get("data") or {}).get("code") or "") or None
        return True


def _code(r: httpx.Response) -> str:
    """The error code of a gateway's JSON error answer, if it has one."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    if isinstance(detail, dict):
        return str(detail.get("code", ""))
    return str(detail or "")[:60]
