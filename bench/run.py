"""`python -m bench.run` (`make bench`): the gateway's latency and throughput, end to end.

Starts the fake upstream and a whole mesh in a sandbox of its own (testbed/: its own
Redis, OpenFGA and OPA, a database and a Kafka namespace, so a running `make up` stack is
left alone), drives it with open-loop load (bench/load.py) for each LLM transport, and
charges the CPU each process burnt to the turns of the window, so the report says not
only how fast but what limits the rate on this machine. The run fails (exit 1) when an
accepted turn was not stored or an answer lacked some of the fake's 20 tokens. The
side-by-side run with LiteLLM proxy (bench/peer.py) reuses its stack.

    python -m bench.run              # everything, ~6-8 minutes on 2 cores
    python -m bench.run --quick      # ~2 minutes
    python -m bench.run --transports http --scenarios latency --rate 40
    python -m bench.run --replicas 2 # two processes of each stage worker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.accounting import CpuProbe, count_stored, cpu_summary, infra_pids, machine_info
from bench.load import Client, LoadRun, percentile, run_load, settle, upstream_ttft
from bench.stage_latency import StageWindow, scrape
from gateway_runtime.settings import CommonSettings
from testbed.mesh import (
    Mesh,
    mesh_env,
    provision,
    replica_names,
    start_fake_upstream,
    start_mesh,
)
from testbed.sandbox import ROOT, Sandbox, free_port

__all__ = ["machine_info", "run_bench", "tear_down"]  # what other benchmarks reuse

log = logging.getLogger("bench")

REPORTS = ROOT / "bench" / "reports"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each scenario runs."""

    warmup_s: float
    latency_rate: float
    latency_s: float
    rates: tuple[float, ...]
    step_s: float
    timeout_s: float
    p99_limit_ms: float


FULL = Plan(3, 40, 20, (20, 40, 60, 65, 80, 100), 12, 10, 2000)
QUICK = Plan(2, 40, 8, (20, 40, 60, 80), 6, 10, 2000)


# ---- the stack ------------------------------------------------------------------------


async def use_transport(mesh: Mesh, transport: str, replicas: int = 1) -> None:
    """Restart the llm_worker replicas (SIGTERM, graceful) with LLM_TRANSPORT=transport."""
    names = replica_names("llm_worker", replicas)
    if mesh.env.get("LLM_TRANSPORT") == transport and all(n in mesh.processes for n in names):
        return
    for name in names:
        proc = mesh.processes.pop(name, None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    mesh.env["LLM_TRANSPORT"] = transport
    for name in names:
        mesh.start(name, "llm_worker")
    await mesh.wait_group_members("llm", count=replicas)


def policy_ports(mesh: Mesh, replicas: int) -> list[int]:
    """A /metrics port for each policy replica (the policy stage's own latency)."""
    ports = []
    for name in replica_names("policy_worker", replicas):
        ports.append(free_port())
        mesh.env_of[name] = {"METRICS_PORT": str(ports[-1])}
    return ports


def scrape_all(ports: list[int], stage: str) -> dict[float, float]:
    """A stage's cumulative buckets summed over its replicas."""
    total: dict[float, float] = {}
    for port in ports:
        for bound, count in scrape(port, stage).items():
            total[bound] = total.get(bound, 0.0) + count
    return total


@dataclass
class Stack:
    """The fake upstream and a whole mesh in a sandbox: what a benchmark drives."""

    sandbox: Sandbox
    mesh: Mesh
    fake: subprocess.Popen[bytes]
    fake_url: str  # the fake's base (no /v1)
    upstream_ttft_ms: dict[str, float]  # the fake's, as a direct client sees it
    policy_metrics_ports: list[int]
    admin_key: str  # the sandbox's bootstrap key (operator, admin, turns)

    def pids(self) -> dict[str, int]:
        """Every process a window's CPU is read from, by name (read anew at every snap)."""
        named = {n: p.pid for n, p in self.mesh.processes.items()}
        return {
            **named,
            "fake_upstream": self.fake.pid,
            "loadgen": os.getpid(),
            **infra_pids(self.sandbox),
        }

    @property
    def charged(self) -> set[str]:
        """The gateway's processes: the mesh and its backing services (not the fake, not
        the load generator)."""
        return set(self.pids()) - {"fake_upstream", "loadgen"}

    async def close(self) -> None:
        await tear_down(self.sandbox, self.mesh, self.fake)


async def open_stack(
    *, own: tuple[str, ...] = (), replicas: int = 1, purpose: str = "bench", **env: str
) -> Stack:
    """A sandbox (own: which of Kafka and Postgres are its own servers), the fake
    upstream, and a mesh on it with `replicas` of each stage worker, taking turns."""
    sandbox = await Sandbox.open(purpose, CommonSettings(), own=own)
    fake: subprocess.Popen[bytes] | None = None
    mesh: Mesh | None = None
    try:
        fake, fake_url = start_fake_upstream(sandbox.dir)
        direct = await upstream_ttft("127.0.0.1", int(fake_url.rsplit(":", 1)[1]))
        mesh = Mesh(env=mesh_env(sandbox, fake_url + "/v1", **env), log_dir=sandbox.dir)
        ports = policy_ports(mesh, replicas)
        log.info("starting mesh %s x%d (logs %s)", sandbox.namespace, replicas, sandbox.dir)
        mesh.operator_key = await provision(mesh.env)
        await start_mesh(mesh, replicas=replicas)
        return Stack(
            sandbox=sandbox,
            mesh=mesh,
            fake=fake,
            fake_url=fake_url,
            upstream_ttft_ms={
                "configured": 50.0,
                "p50": percentile(direct, 50),
                "p99": percentile(direct, 99),
                "used": percentile(direct, 50),
                "samples": len(direct),
            },
            policy_metrics_ports=ports,
            admin_key=mesh.operator_key,
        )
    except BaseException:
        if mesh is not None:
            mesh.stop_all()
        if fake is not None:
            fake.terminate()
        await sandbox.close()
        raise


async def tear_down(sandbox: Sandbox, mesh: Mesh, fake: subprocess.Popen[bytes]) -> None:
    """Stop the mesh and the fake; the sandbox takes its database, topics and keys along."""
    mesh.stop_all()
    fake.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        fake.wait(10)
    await sandbox.close()


def failures(report: dict[str, Any]) -> list[str]:
    """What makes a run fail: turns accepted but not stored, answers cut short."""
    found = []
    for t in report["transports"]:
        storage = t["storage"]
        if storage["stored"] < storage["total"]:
            found.append(
                f"{t['transport']}: {storage['total'] - storage['stored']} of "
                f"{storage['total']} accepted turns were not stored"
            )
        runs = [t["latency"]] if "latency" in t else []
        runs += t.get("throughput", {}).get("steps", [])
        short = sum(r["short_answers"] for r in runs)
        if short:
            found.append(f"{t['transport']}: {short} answers lacked some of the 20 tokens")
    return found


# ---- scenarios ------------------------------------------------------------------------


@dataclass
class Bench:
    sandbox: Sandbox
    mesh: Mesh
    client: Client
    probe: CpuProbe
    upstream_ttft_ms: float
    plan: Plan
    prefix: str
    turn_ids: list[str]
    policy_metrics_ports: list[int]
    runs: int = 0

    async def load(self, rate: float, duration_s: float) -> dict[str, Any]:
        """One open-loop run; its summary with the window's CPU charged per turn."""
        self.runs += 1
        policy_before: dict[float, float] = {}

        def window_start() -> None:
            policy_before.update(scrape_all(self.policy_metrics_ports, "policy"))
            self.probe.start()

        run: LoadRun = await run_load(
            self.client,
            rate=rate,
            warmup_s=self.plan.warmup_s,
            duration_s=duration_s,
            session_prefix=f"{self.prefix}-{self.runs}",
            timeout_s=self.plan.timeout_s,
            seed=self.runs,
            on_window_start=window_start,
        )
        cpu = self.probe.stop()
        policy = StageWindow(policy_before, scrape_all(self.policy_metrics_ports, "policy"))
        self.turn_ids += [t.turn_id for t in run.turns if t.turn_id]
        summary = run.summary(self.upstream_ttft_ms, self.plan.p99_limit_ms)
        summary["cpu"] = cpu_summary(cpu, len(run.measured))
        # The policy stage's own handling time (its checks), apart from the hops around it.
        summary["policy_stage"] = policy.summary()
        prefix = f"{self.prefix}-{self.runs}"
        summary["settle_s"], probes = await settle(self.client, prefix, self.plan.timeout_s)
        self.turn_ids += probes
        return summary


async def run_transport(
    bench: Bench, transport: str, scenarios: set[str], replicas: int = 1
) -> dict[str, Any]:
    await use_transport(bench.mesh, transport, replicas)
    first = len(bench.turn_ids)
    out: dict[str, Any] = {"transport": transport}
    if "latency" in scenarios:
        log.info("[%s] latency at %.0f turns/s", transport, bench.plan.latency_rate)
        out["latency"] = await bench.load(bench.plan.latency_rate, bench.plan.latency_s)
    if "throughput" in scenarios:
        steps: list[dict[str, Any]] = []
        for rate in bench.plan.rates:
            log.info("[%s] throughput step %.0f turns/s", transport, rate)
            step = await bench.load(rate, bench.plan.step_s)
            steps.append(step)
            if not step["sustained"]:
                break
        sustained = [s["target_rate"] for s in steps if s["sustained"]]
        out["throughput"] = {"steps": steps, "max_sustained_rate": max(sustained, default=0)}
    ids = bench.turn_ids[first:]
    out["storage"] = await count_stored(bench.sandbox.postgres_dsn, ids)
    return out


# ---- report ---------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    lines: list[str] = []
    m = report["machine"]
    up = report["upstream_ttft_ms"]
    lines.append(
        f"Soma Gateway bench  {m['date']}  commit {m['git_commit'][:10]}"
        f"{' (dirty)' if m['git_dirty'] else ''}  nproc {m['nproc']}  {m['cpu_model']}"
    )
    lines.append(
        f"fake upstream: {up['configured']:.0f} ms TTFT configured, measured direct "
        f"p50 {up['p50']:.1f} / p99 {up['p99']:.1f} ms; gateway-added TTFT = client TTFT "
        f"- {up['used']:.1f} ms (the measured median)"
    )
    for t in report["transports"]:
        name = t["transport"]
        lines.append("")
        lines.append(f"== LLM_TRANSPORT={name} ==")
        s = t["storage"]
        lines.append(
            f"stored in Postgres: {s['stored']}/{s['total']} accepted turns "
            f"({s['completed']} completed)"
        )
        rows: list[tuple[str, dict[str, Any]]] = []
        if "latency" in t:
            rows.append(("latency", t["latency"]))
        for step in t.get("throughput", {}).get("steps", []):
            rows.append(("step", step))
        if rows:
            lines.append(
                f"{'run':8} {'rate':>5} {'offer':>6} {'done/s':>6} {'turns':>6} {'err%':>6} "
                f"{'post50':>6} {'post99':>6} {'gw50':>6} {'gw90':>6} {'gw99':>6} "
                f"{'tot50':>6} {'tot99':>7} {'lag99':>6} {'cpu/t':>6}  ok?"
            )
            for kind, r in rows:
                lines.append(
                    f"{kind:8} {r['target_rate']:>5.0f} {r['offered_rate']:>6.1f} "
                    f"{r['completed_rate']:>6.1f} {r['turns']:>6} {100 * r['error_rate']:>6.2f} "
                    f"{_f(r['post_ms'].get('p50')):>6} {_f(r['post_ms'].get('p99')):>6} "
                    f"{_f(r['gateway_ttft_ms'].get('p50')):>6} "
                    f"{_f(r['gateway_ttft_ms'].get('p90')):>6} "
                    f"{_f(r['gateway_ttft_ms'].get('p99')):>6} "
                    f"{_f(r['total_ms'].get('p50')):>6} {_f(r['total_ms'].get('p99')):>7} "
                    f"{_f(r['lag_ms'].get('p99')):>6} {r['cpu']['ms_per_turn_total']:>6.1f}  "
                    f"{'yes' if r['sustained'] else 'NO'}"
                    + (f"  {r['error_kinds']}" if r["error_kinds"] else "")
                )
        for kind, r in rows:
            p = r.get("policy_stage", {})
            lines.append(
                f"policy stage ({kind} {r['target_rate']:.0f}/s): p50 {_f(p.get('p50_ms'))} ms, "
                f"p99 {_f(p.get('p99_ms'))} ms over {p.get('events', 0):.0f} events"
            )
        if "throughput" in t:
            lines.append(
                f"max sustained: {t['throughput']['max_sustained_rate']:.0f} turns/s "
                "(<1% errors, >= 95% of the arrivals done OK by the window's end + the p99 "
                "limit, generator lag p99 < 100 ms, p99 total < "
                f"{report['plan']['p99_limit_ms']:.0f} ms)"
            )
        cpu_rows = [(k, r) for k, r in rows if r["ok"]]
        if cpu_rows:
            names = sorted(
                {n for _, r in cpu_rows for n in r["cpu"]["ms_per_turn"]},
                key=lambda n: -cpu_rows[0][1]["cpu"]["ms_per_turn"].get(n, 0),
            )
            lines.append("CPU ms per turn (cores busy) by process, per run:")
            lines.append(
                f"{'process':20}" + "".join(f"{r['target_rate']:>14.0f}" for _, r in cpu_rows)
            )
            for n in [*names, "TOTAL"]:
                cells = []
                for _, r in cpu_rows:
                    if n == "TOTAL":
                        ms = r["cpu"]["ms_per_turn_total"]
                        cores = sum(r["cpu"]["cores_used"].values())
                    else:
                        ms = r["cpu"]["ms_per_turn"].get(n, float("nan"))
                        cores = r["cpu"]["cores_used"].get(n, float("nan"))
                    cells.append(f"{_f(ms, 2):>7} ({_f(cores, 2):>4})")
                lines.append(f"{n:20}" + "".join(f"{c:>14}" for c in cells))
            lines.append(
                f"{'not ours (cores)':20}"
                + "".join(f"{'(' + _f(r['cpu']['other_cores'], 2) + ')':>14}" for _, r in cpu_rows)
            )
    lines.append("")
    lines.append(
        "columns: rate = target turns/s; offer = arrivals/s; done/s = turns ending OK inside "
        "the window per s; gw = gateway-added TTFT ms; tot = POST sent -> final event ms; "
        "lag99 = load generator start delay p99 ms; cpu/t = CPU ms per turn, all processes"
    )
    lines.append(f"wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------


async def bench_main(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.rate is not None:
        plan = replace(plan, latency_rate=args.rate)
    if args.rates:
        plan = replace(plan, rates=tuple(float(r) for r in args.rates.split(",")))
    scenarios = set(args.scenarios.split(","))
    transports = args.transports.split(",")
    started = time.monotonic()
    # --own-broker: a broker of the bench's own, so nothing else on the machine shares it
    own = ("kafka",) if args.own_broker else ()
    stack = await open_stack(
        own=own, replicas=args.replicas, LLM_TRANSPORT=transports[0], LOG_LEVEL=args.log_level
    )
    report: dict[str, Any] = {
        "machine": machine_info(),
        "namespace": stack.sandbox.namespace,
        "logs": str(stack.sandbox.dir),
        "plan": plan.__dict__,
        "replicas": args.replicas,
        "load_generator": "raw asyncio HTTP/1.1 client (bench/load.py), uvloop if present",
        "upstream_ttft_ms": stack.upstream_ttft_ms,
        "transports": [],
    }
    client = Client("127.0.0.1", int(stack.mesh.env["GATEWAY_PORT"]))
    try:
        bench = Bench(
            sandbox=stack.sandbox,
            mesh=stack.mesh,
            client=client,
            probe=CpuProbe(stack.pids),
            upstream_ttft_ms=stack.upstream_ttft_ms["used"],
            plan=plan,
            prefix=f"{stack.sandbox.namespace}-s",
            turn_ids=[],
            policy_metrics_ports=stack.policy_metrics_ports,
        )
        for transport in transports:
            report["transports"].append(
                await run_transport(bench, transport, scenarios, args.replicas)
            )
    finally:
        await client.close()
        await stack.close()
    report["wall_s"] = time.monotonic() - started
    return report


def run_bench(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run a benchmark's main on uvloop when it is there, with its progress on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:
        return asyncio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (~2 minutes)")
    parser.add_argument("--scenarios", default="latency,throughput")
    parser.add_argument(
        "--own-broker", action="store_true", help="run a Kafka broker of the bench's own"
    )
    parser.add_argument("--transports", default="http,litellm")
    parser.add_argument("--rate", type=float, help="latency scenario rate (turns/s)")
    parser.add_argument("--rates", help="throughput steps, comma-separated turns/s")
    parser.add_argument("--log-level", default="INFO", help="the mesh's LOG_LEVEL")
    parser.add_argument(
        "--replicas", type=int, default=1, help="processes of each stage worker (default 1)"
    )
    parser.add_argument("--report", type=Path, default=REPORTS / "latest.json")
    args = parser.parse_args()
    report = run_bench(bench_main(args))
    report["failures"] = failures(report)
    finish(report, args.report, render)


def finish(report: dict[str, Any], path: Path, render: Callable[[dict[str, Any]], str]) -> None:
    """Write the report, print its table, and exit 1 when it names failures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    sys.stdout.write(render(report) + f"\nreport: {path}\n")
    if report["failures"]:
        sys.stdout.write("FAILED: " + "; ".join(report["failures"]) + "\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
