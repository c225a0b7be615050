"""Injecting the faults of a chaos run into its sandbox, its mesh and the fake upstream.

Only what is the sandbox's own is ever stopped: its Kafka broker and Postgres server (the
runner opens the sandbox with both its own), its Redis, OpenFGA and OPA; Sandbox refuses
anything else. A killed process gets no shutdown (SIGKILL: no offset commit, no flush) and
is started again after a while, as a supervisor or Kubernetes would. A fault that cannot
be injected or healed is noted in its record, and the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from bench.chaos.plan import Fault, Plan
from testbed.mesh import Mesh
from testbed.sandbox import Sandbox

log = logging.getLogger(__name__)


@dataclass
class Injected:
    """A fault as it happened; times are seconds since the load started."""

    fault: Fault
    injected_s: float | None = None
    healed_s: float | None = None  # the process or server is back (or the upstream is ok)
    note: str = ""  # what went wrong injecting or healing it


def module_of(process: str) -> str:
    """`llm_worker-2` runs `python -m llm_worker`."""
    return process.partition("-")[0]


class Injector:
    def __init__(
        self,
        sandbox: Sandbox,
        mesh: Mesh,
        fake_url: str,
        plan: Plan,
        now: Callable[[], float],
        before_redis_restart: Callable[[], Awaitable[None]],
    ) -> None:
        self.sandbox = sandbox
        self.mesh = mesh
        self.fake_url = fake_url
        self.plan = plan
        self.now = now
        self.before_redis_restart = before_redis_restart

    async def run(self, fault: Fault) -> Injected:
        """Inject the fault, keep it for its time, heal it; the record of what happened."""
        done = Injected(fault)
        try:
            if fault.kind == "kill":
                await self._kill(fault.target, done)
            elif fault.kind == "upstream":
                await self._upstream(fault.target, done)
            else:
                await self._server(fault, done)
        except Exception as exc:  # a fault that went wrong is reported, the run goes on
            log.exception("fault %s", fault.name)
            done.note = f"{type(exc).__name__}: {exc}"[:200]
        return done

    async def _kill(self, process: str, done: Injected) -> None:
        if process not in self.mesh.processes:
            done.note = f"{process} was not running"
            return
        done.injected_s = self.now()
        self.mesh.kill(process)
        await asyncio.sleep(self.plan.kill_restart_s)
        self.mesh.start(process, module_of(process))
        done.healed_s = self.now()
        if process.startswith("ingress"):
            await self._healthy(self.mesh.ingress_url(process), done)

    async def _healthy(self, url: str, done: Injected, timeout_s: float = 60) -> None:
        """Until the ingress at `url` answers its health check (a note if it does not)."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/v1/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        done.note = f"not healthy {timeout_s:.0f} s after its start"

    async def _server(self, fault: Fault, done: Injected) -> None:
        if fault.target == "redis":  # its logs die with it: count their finals first
            await self.before_redis_restart()
        done.injected_s = self.now()
        await self.sandbox.stop(fault.target)
        if fault.kind == "outage":
            await asyncio.sleep(self.plan.outage_s)
        started = time.monotonic()
        await self.sandbox.start(fault.target)
        done.healed_s = self.now()
        log.info("%s answers again after %.1f s", fault.target, time.monotonic() - started)

    async def _upstream(self, mode: str, done: Injected) -> None:
        async with httpx.AsyncClient(base_url=self.fake_url, timeout=10) as fake:
            (await fake.post("/admin/mode", json={"mode": mode})).raise_for_status()
            done.injected_s = self.now()
            await asyncio.sleep(self.plan.outage_s)
            (await fake.post("/admin/mode", json={"mode": "ok"})).raise_for_status()
            done.healed_s = self.now()
