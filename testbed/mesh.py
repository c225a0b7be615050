"""Runs a whole mesh (ingress + every stage worker) as real processes, in a sandbox.

The mesh's backing services are its sandbox's (testbed/sandbox.py); Kafka and Postgres
are the machine's, under the sandbox's namespace and database. The model upstream is the
fake OpenAI-compatible server of `bench/fake_upstream.py`, on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from testbed.sandbox import ROOT, Sandbox, free_port

WORKERS = (
    "policy_worker",
    "context_worker",
    "llm_worker",
    "tool_dispatcher",
    "persistence_worker",
)
# Stages whose consumer group must be stable before the mesh takes turns.
STAGES = ("policy", "context", "llm", "persistence")


@dataclass
class Mesh:
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_PORT']}"

    def start(self, name: str, module: str | None = None) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module or name],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """kill -9: no shutdown, no offset commit."""
        proc = self.processes.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.processes.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    async def wait_healthy(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: object = None
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    r = await client.get(self.base_url + "/v1/health", timeout=5)
                    last = r.json()
                    if r.status_code == 200:
                        return dict(r.json())
                except httpx.HTTPError as exc:
                    last = exc
                await asyncio.sleep(0.2)
        raise TimeoutError(f"ingress not healthy: {last}")

    async def wait_group_members(self, stage: str, timeout: float = 60, count: int = 1) -> None:
        """Until the stage's consumer group is stable with `count` members or more."""
        group = f"{self.env['KAFKA_NAMESPACE']}.{stage}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"])
        await admin.start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self._check_alive()
                [response] = await admin.describe_consumer_groups([group])
                _, _, state, _, _, members = response.groups[0][:6]
                if state == "Stable" and len(members) >= count:
                    return
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        raise TimeoutError(f"consumer group {group} has no stable member")

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")


def mesh_env(sandbox: Sandbox, fake_llm_url: str, **extra: str) -> dict[str, str]:
    """The environment of every process of a mesh in `sandbox`, models on the fake."""
    env = dict(os.environ)
    env.update(sandbox.env)
    env.update(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_REQUIRE_AUTH="false",
        DEFAULT_MODEL="openai/fake",
        DEPLOYMENT_MODE="local",
        DEFAULT_MODEL_BASE_URL=fake_llm_url,
        RETRY_BACKOFF_S="0.05",
        LLM_RETRY_BACKOFF_S="0.05",
        BREAKER_FAILURE_THRESHOLD="3",
        BREAKER_COOLDOWN_S="2",
        PROFILE_CACHE_TTL_S="0.5",
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def start_fake_upstream(log_dir: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The fake OpenAI-compatible upstream on a free port: its process and base URL."""
    port = free_port()
    out = open(log_dir / "fake_upstream.log", "ab") if log_dir else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )
    if out is not None:
        out.close()  # the child holds its own descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/v1/models", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)


async def run_module(env: dict[str, str], module: str) -> str:
    """`python -m module` in the mesh's environment; its stdout (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {module} failed with {proc.returncode}")
    return out.decode().strip()


async def provision(env: dict[str, str]) -> str:
    """Topics, migrations, OpenFGA model and OPA policy; returns the bootstrap admin key."""
    await run_module(env, "gateway_runtime.provision")
    return await run_module(env, "ingress.auth.bootstrap")


async def start_mesh(mesh: Mesh, *, workers: tuple[str, ...] = WORKERS) -> None:
    """Start the ingress and `workers`, and wait until they take turns."""
    mesh.start("ingress")
    for worker in workers:
        mesh.start(worker)
    await mesh.wait_healthy()
    for stage in STAGES:
        if any(w.startswith(stage) for w in workers):
            await mesh.wait_group_members(stage)
