"""`python -m bench.run` (`make bench`): the gateway's latency and throughput, end to end.

Starts the fake upstream and a whole mesh in a sandbox of its own (testbed/: its own
Redis, OpenFGA and OPA, a database and a Kafka namespace, so a running `make up` stack is
left alone), drives it with open-loop load (bench/load.py) for each LLM transport, and
charges the CPU each process burnt to the turns of the window, so the report says not
only how fast but what limits the rate on this machine. The run fails (exit 1) when an
accepted turn was not stored or an answer came back short.

    python -m bench.run              # everything, ~6-8 minutes on 2 cores
    python -m bench.run --quick      # ~2 minutes
    python -m bench.run --transports http --scenarios latency --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.load import Client, LoadRun, TurnResult, percentile, run_load, upstream_ttft
from bench.stage_latency import StageWindow, scrape
from gateway_runtime.settings import CommonSettings
from testbed.mesh import ROOT, Mesh, mesh_env, provision, start_fake_upstream, start_mesh
from testbed.sandbox import COMPONENTS, Sandbox, free_port

log = logging.getLogger("bench")

CLK_TCK = os.sysconf("SC_CLK_TCK")
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


# ---- per-process CPU ------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime ticks) for every process now alive."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return table


def _tree_ticks(root: int, table: dict[int, tuple[int, int]]) -> int | None:
    """CPU ticks of a process and its live descendants (Postgres backends, JVM wrappers).

    The bench process itself (the load generator) is the parent of the whole mesh, so it
    counts alone.
    """
    if root not in table:
        return None
    if root == os.getpid():
        return table[root][1]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [root], set()
    while todo and len(seen) < 10_000:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def infra_pids(sandbox: Sandbox) -> dict[str, int]:
    """The backing services' pids: the machine's Kafka and Postgres, the sandbox's others."""
    state = sandbox.base.soma_home / "state"
    pids: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids["kafka"] = int((state / "kafka.pid").read_text().split()[0])
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids["postgres"] = int((state / "postgres" / "postmaster.pid").read_text().split()[0])
    for name in COMPONENTS:
        with contextlib.suppress(OSError, ValueError):
            pids[name] = sandbox.pid(name)
    return pids


def _machine_busy_ticks() -> int:
    """All CPUs' non-idle ticks (/proc/stat), to see what else competes for the cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


class CpuProbe:
    """Snapshots of CPU ticks per named process tree; read the pids anew at every snap."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids
        self._before: dict[str, tuple[int, int]] = {}
        self._t0 = 0.0
        self._busy0 = 0

    def start(self) -> None:
        table = _proc_table()
        self._t0 = time.monotonic()
        self._busy0 = _machine_busy_ticks()
        self._before = {}
        for name, pid in self._pids().items():
            ticks = _tree_ticks(pid, table)
            if ticks is not None:
                self._before[name] = (pid, ticks)

    def stop(self) -> dict[str, Any]:
        """CPU ms per process since start(), and the wall time; a restarted pid is dropped."""
        table = _proc_table()
        wall = time.monotonic() - self._t0
        busy_ms = (_machine_busy_ticks() - self._busy0) * 1000 / CLK_TCK
        cpu_ms: dict[str, float] = {}
        for name, pid in self._pids().items():
            before = self._before.get(name)
            ticks = _tree_ticks(pid, table)
            if before is None or before[0] != pid or ticks is None:
                continue
            cpu_ms[name] = (ticks - before[1]) * 1000 / CLK_TCK
        return {"wall_s": wall, "cpu_ms": cpu_ms, "machine_busy_ms": busy_ms}


# ---- the stack ------------------------------------------------------------------------


async def use_transport(mesh: Mesh, transport: str) -> None:
    """Restart the llm_worker (SIGTERM, graceful) with LLM_TRANSPORT=transport."""
    if mesh.env.get("LLM_TRANSPORT") == transport and "llm_worker" in mesh.processes:
        return
    proc = mesh.processes.pop("llm_worker", None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    mesh.env["LLM_TRANSPORT"] = transport
    mesh.start("llm_worker")
    await mesh.wait_group_members("llm")


async def count_stored(dsn: str, turn_ids: list[str], timeout_s: float = 60) -> dict[str, int]:
    """Rows in `turns` for these ids, waiting (bounded) for the persistence stage to catch up."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while True:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'completed') AS completed"
                " FROM turns WHERE turn_id = ANY($1::text[])",
                turn_ids,
            )
            stored = int(row["n"])
            if stored != last:
                last, since = stored, time.monotonic()
            now = time.monotonic()
            if stored >= len(turn_ids) or now > deadline or now - since > 10:
                return {
                    "total": len(turn_ids),
                    "stored": stored,
                    "completed": int(row["completed"]),
                }
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


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
            found.append(f"{t['transport']}: {short} answers had fewer than 20 deltas")
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
    policy_metrics_port: int
    runs: int = 0

    async def load(self, rate: float, duration_s: float) -> dict[str, Any]:
        """One open-loop run; its summary with the window's CPU charged per turn."""
        self.runs += 1
        policy_before: dict[float, float] = {}

        def window_start() -> None:
            policy_before.update(scrape(self.policy_metrics_port, "policy"))
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
        policy = StageWindow(policy_before, scrape(self.policy_metrics_port, "policy"))
        self.turn_ids += [t.turn_id for t in run.turns if t.turn_id]
        summary = run.summary(self.upstream_ttft_ms, self.plan.p99_limit_ms)
        measured = max(1, len(run.measured))
        summary["cpu"] = {
            "wall_s": cpu["wall_s"],
            "ms_per_turn": {k: v / measured for k, v in cpu["cpu_ms"].items()},
            "cores_used": {k: v / 1000 / cpu["wall_s"] for k, v in cpu["cpu_ms"].items()},
        }
        summary["cpu"]["ms_per_turn_total"] = sum(summary["cpu"]["ms_per_turn"].values())
        # The policy stage's own handling time (its checks), apart from the hops around it.
        summary["policy_stage"] = policy.summary()
        # Everything the machine ran that is not ours (other jobs sharing the cores).
        summary["cpu"]["other_cores"] = max(
            0.0, (cpu["machine_busy_ms"] - sum(cpu["cpu_ms"].values())) / 1000 / cpu["wall_s"]
        )
        summary["settle_s"] = await self.settle()
        return summary

    async def settle(self, limit_s: float = 60) -> float:
        """Wait until a lone probe turn is fast again: an overloaded run leaves a backlog
        in the stages that would otherwise be charged to the next run."""
        began = time.monotonic()
        probes = 0
        while time.monotonic() - began < limit_s:
            probes += 1
            result = TurnResult(at_s=0, measured=False)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.plan.timeout_s):
                    sid = f"{self.prefix}-probe-{self.runs}-{probes}"
                    await self.client.turn(result, sid, time.perf_counter())
            if result.turn_id:
                self.turn_ids.append(result.turn_id)
            if result.total_ms is not None and result.total_ms < 1000:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)  # the stages behind the final event (persistence)
        return time.monotonic() - began


async def run_transport(bench: Bench, transport: str, scenarios: set[str]) -> dict[str, Any]:
    await use_transport(bench.mesh, transport)
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


def machine_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        return ""

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_changed_files": git("status", "--porcelain").splitlines(),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": os.getloadavg(),
    }


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
                "(<1% errors, done/s >= 95% of offer, generator lag p99 < 100 ms, p99 total < "
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
        plan = Plan(**{**plan.__dict__, "latency_rate": args.rate})
    if args.rates:
        plan = Plan(**{**plan.__dict__, "rates": tuple(float(r) for r in args.rates.split(","))})
    scenarios = set(args.scenarios.split(","))
    transports = args.transports.split(",")
    started = time.monotonic()
    # --own-broker: a broker of the bench's own, so nothing else on the machine shares it
    own = ("kafka",) if args.own_broker else ()
    sandbox = await Sandbox.open("bench", CommonSettings(), own=own)
    log_dir = sandbox.dir
    report: dict[str, Any] = {
        "machine": machine_info(),
        "namespace": sandbox.namespace,
        "logs": str(log_dir),
        "plan": plan.__dict__,
        "load_generator": "raw asyncio HTTP/1.1 client (bench/load.py), uvloop if present",
        "transports": [],
    }
    fake, fake_url = start_fake_upstream(log_dir)
    port = int(fake_url.rsplit(":", 1)[1])
    env = mesh_env(sandbox, fake_url + "/v1", LLM_TRANSPORT=transports[0], LOG_LEVEL=args.log_level)
    mesh = Mesh(env=env, log_dir=log_dir)
    policy_metrics_port = free_port()
    mesh.env_of["policy_worker"] = {"METRICS_PORT": str(policy_metrics_port)}
    turn_ids: list[str] = []
    client = Client("127.0.0.1", int(env["GATEWAY_PORT"]))
    try:
        direct = await upstream_ttft("127.0.0.1", port)
        report["upstream_ttft_ms"] = {
            "configured": 50.0,
            "p50": percentile(direct, 50),
            "p99": percentile(direct, 99),
            "used": percentile(direct, 50),
            "samples": len(direct),
        }
        log.info("starting mesh %s (logs %s)", sandbox.namespace, log_dir)
        await provision(env)
        await start_mesh(mesh)

        def pids() -> dict[str, int]:
            named = {n: p.pid for n, p in mesh.processes.items()}
            return {
                **named,
                "fake_upstream": fake.pid,
                "loadgen": os.getpid(),
                **infra_pids(sandbox),
            }

        bench = Bench(
            sandbox=sandbox,
            mesh=mesh,
            client=client,
            probe=CpuProbe(pids),
            upstream_ttft_ms=report["upstream_ttft_ms"]["used"],
            plan=plan,
            prefix=f"{sandbox.namespace}-s",
            turn_ids=turn_ids,
            policy_metrics_port=policy_metrics_port,
        )
        for transport in transports:
            report["transports"].append(await run_transport(bench, transport, scenarios))
    finally:
        await client.close()
        await tear_down(sandbox, mesh, fake)
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
    parser.add_argument("--report", type=Path, default=REPORTS / "latest.json")
    args = parser.parse_args()
    report = run_bench(bench_main(args))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    report["failures"] = failures(report)
    args.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
    sys.stdout.write(render(report) + f"\nreport: {args.report}\n")
    if report["failures"]:
        sys.stdout.write("FAILED: " + "; ".join(report["failures"]) + "\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
