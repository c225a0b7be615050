"""Runs a whole mesh (ingress + every stage worker) as real processes, in a sandbox.

The mesh's backing services are its sandbox's (testbed/sandbox.py); Kafka and Postgres
are the machine's, under the sandbox's namespace and database. The model upstream is the
fake OpenAI-compatible server of `bench/fake_upstream.py`, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway_runtime.kafka import KafkaConnection, make_admin
from gateway_runtime.kafka_credentials import ADMIN
from schemas.stages import STAGES as STAGE_LIST
from testbed.sandbox import ROOT, Sandbox, free_port

# Every stage's worker (schemas/stages.py), and the stage (consumer group) each one runs:
# its group must be stable before the mesh takes turns.
WORKERS = tuple(s.service for s in STAGE_LIST)
STAGE_OF = {s.service: s.name for s in STAGE_LIST}
STAGES = tuple(STAGE_OF.values())
SUPERVISOR = "supervisor"
# The stage workers a mesh may run several of (`start_mesh(replicas=N)`); the dead-letter
# index stays one. Each topic has 12 partitions (schemas/topics.py), so up to 12 share one.
REPLICATED = (
    "policy_worker",
    "context_worker",
    "llm_worker",
    "tool_dispatcher",
    "persistence_worker",
)


def replica_names(worker: str, replicas: int) -> list[str]:
    """The process names of a worker's replicas: `llm_worker`, `llm_worker-2`, ..."""
    return [worker, *(f"{worker}-{i}" for i in range(2, replicas + 1))]


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class Mesh:
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Services run by the supervisor (`supervise`), which restarts them when they die.
    supervised: tuple[str, ...] = ()
    # Extra environment of one process (e.g. the policy worker's METRICS_PORT in bench/).
    env_of: dict[str, dict[str, str]] = field(default_factory=dict)
    # The bootstrap key `provision` returned (operator, admin, turns): what model profiles,
    # keys, dead letters and the details of /v1/health need, auth on or off.
    operator_key: str = ""

    @property
    def operator_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_key}"} if self.operator_key else {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_PORT']}"

    def ingress_url(self, name: str) -> str:
        """The base URL of one ingress process (`ingress`, `ingress-2`, ...: each listens on
        a port of its own, `start_mesh(ingresses=N)`)."""
        port = self.env_of.get(name, {}).get("GATEWAY_PORT", self.env["GATEWAY_PORT"])
        return f"http://127.0.0.1:{port}"

    @property
    def kafka(self) -> KafkaConnection:
        """The broker's admin login, from the mesh's credentials directory (for tests
        that read or write the mesh's topics beside it)."""
        servers = self.env["KAFKA_BOOTSTRAP_SERVERS"]
        directory = self.env.get("KAFKA_CREDENTIALS_DIR")
        if directory is None:
            return KafkaConnection(servers)
        protocol = self.env.get("KAFKA_SECURITY_PROTOCOL", "auto")
        return KafkaConnection.for_principal(
            servers, Path(directory), ADMIN, security_protocol=protocol
        )

    @property
    def pid_dir(self) -> Path:
        """Where the supervisor keeps `<name>.pid` of each service it runs."""
        return self.log_dir / "supervised"

    def start(
        self, name: str, module: str | None = None, args: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module or name, *args],
                cwd=ROOT,
                # STAGE_INSTANCE: each process its own transactional.id (replicas too)
                env={**self.env, "STAGE_INSTANCE": name, **self.env_of.get(name, {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = proc
        return proc

    def supervise(self, names: Sequence[str]) -> subprocess.Popen[bytes]:
        """Run `names` under gateway_runtime.supervisor, as `make up` does: a service that
        dies is started again (its pid: `pid`)."""
        self.supervised = tuple(names)
        args = ["--state-dir", str(self.pid_dir), "--log-dir", str(self.log_dir), *names]
        return self.start(SUPERVISOR, "gateway_runtime.supervisor", args)

    def pid(self, name: str) -> int:
        """The running process of `name` (FileNotFoundError: a supervised one is between
        a death and its restart)."""
        if name in self.processes:
            return self.processes[name].pid
        return int((self.pid_dir / f"{name}.pid").read_text())

    def kill(self, name: str) -> int:
        """kill -9: no shutdown, no offset commit. A supervised service is restarted by the
        supervisor; any other is gone until `start`. Returns the killed pid."""
        if name not in self.processes and name in self.supervised:
            pid = self.pid(name)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            return pid
        proc = self.processes.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return proc.pid

    async def wait_restarted(self, name: str, old_pid: int, timeout: float = 10) -> int:
        """Until the supervisor runs `name` again under another pid than `old_pid`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                pid = self.pid(name)
            except (FileNotFoundError, ValueError):  # not yet, or being written
                pid = old_pid
            if pid != old_pid and _alive(pid):
                return pid
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{name} (pid {old_pid}) was not restarted in {timeout}s")

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
        self.supervised = ()

    async def wait_healthy(self, timeout: float = 60, url: str | None = None) -> dict[str, Any]:
        """Until the ingress at `url` (by default the first) says it is healthy."""
        deadline = time.monotonic() + timeout
        last: object = None
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    r = await client.get((url or self.base_url) + "/v1/health", timeout=5)
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
        admin = make_admin(self.kafka, client_id="mesh-wait")
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
        # The fake upstream listens on loopback: its address and port are allow-listed,
        # nothing else on the machine is (gateway_runtime/egress.py).
        MODEL_EGRESS_ALLOW=json.dumps([urlsplit(fake_llm_url).netloc]),
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


def start_loopback_server(
    module: str, ready_path: str, log_dir: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m <module> --port <free port>`, once GET `ready_path` answers: its process
    and base URL. For the fakes of what is outside the system (model upstream, registry)."""
    port = free_port()
    name = module.rpartition(".")[2]
    out = open(log_dir / f"{name}.log", "ab") if log_dir else None
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port)],
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
            httpx.get(url + ready_path, timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)


def start_fake_upstream(log_dir: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The fake OpenAI-compatible upstream on a free port: its process and base URL."""
    return start_loopback_server("bench.fake_upstream", "/v1/models", log_dir)


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


@contextlib.asynccontextmanager
async def lone_ingress(
    sandbox: Sandbox, fake_llm_url: str, **extra: str
) -> AsyncIterator[tuple[Mesh, str]]:
    """An ingress alone (no stage workers: a turn only needs to reach Kafka) with auth
    required, and its operator key; stopped when the block ends."""
    env = mesh_env(sandbox, fake_llm_url, GATEWAY_REQUIRE_AUTH="true", **extra)
    mesh = Mesh(env=env, log_dir=sandbox.dir)
    try:
        operator_key = await provision(env)
        await start_mesh(mesh, workers=())
        yield mesh, operator_key
    finally:
        mesh.stop_all()


async def start_mesh(
    mesh: Mesh,
    *,
    workers: tuple[str, ...] = WORKERS,
    supervised: bool = False,
    replicas: int = 1,
    ingresses: int = 1,
) -> None:
    """Start the ingress and `workers` (`supervised`: under the supervisor, which restarts
    what dies; `replicas`: processes of each REPLICATED worker, one consumer group;
    `ingresses`: ingress processes, each on a port of its own, `Mesh.ingress_url`), and
    wait until they take turns."""
    counts = {w: replicas if w in REPLICATED else 1 for w in workers}
    ingress_names = replica_names("ingress", ingresses)
    for name in ingress_names[1:]:
        mesh.env_of.setdefault(name, {}).setdefault("GATEWAY_PORT", str(free_port()))
    if supervised:
        if replicas != 1 or ingresses != 1:
            raise ValueError("the supervisor runs one process per service")
        mesh.supervise(("ingress", *workers))
    else:
        for name in ingress_names:
            mesh.start(name, "ingress")
        for worker in workers:
            for name in replica_names(worker, counts[worker]):
                mesh.start(name, worker)
    for name in ingress_names:
        await mesh.wait_healthy(url=mesh.ingress_url(name))
    for worker in workers:
        if worker in STAGE_OF:
            await mesh.wait_group_members(STAGE_OF[worker], count=counts[worker])
