"""`python -m bench.peer` (`make bench-peer`): the gateway beside LiteLLM proxy, one run.

Both sit in front of the same fake upstream (bench/fake_upstream.py: 50 ms to the first
token, then 20 tokens 5 ms apart) on the same machine, and the same open-loop generator
(bench/load.py) drives them with the same arrivals: at each rate both get the Poisson
schedule of one seed, one side after the other, the side that goes first alternating
from rate to rate (so neither always meets a machine the other just warmed or heated).

- Soma: the whole mesh in a sandbox (bench/run.py's `open_stack`), driven as a client
  with an API key would (a `turns` key made with the sandbox's bootstrap key), through
  the session API: events stream open, then POST the message, TTFT at the first answer
  text, the end at `assistant.final`.
- LiteLLM proxy at a pinned version in a venv of its own (bench/litellm_peer.py), two
  workers, its master key as Bearer: streamed `POST /v1/chat/completions`, TTFT at the
  first answer text, the end at `data: [DONE]`.

Added TTFT is the client's TTFT minus the fake's own median, measured direct. CPU per
request is each side's own processes over its window: for Soma the ingress, every worker
and its backing services (Kafka, Postgres, Redis, OpenFGA, OPA: whole process trees, so
on the machine's shared Kafka and Postgres anything else they serve is charged too; see
`--own`), for LiteLLM its proxy's process tree; the fake and the generator are apart.
A side stops at the first rate it does not sustain (`--keep-going`: it runs them all).
The run fails (exit 1) when a Soma turn that was accepted is not found stored, or an
answer on either side lacks some of the fake's tokens.

    python -m bench.peer                 # idle floor + 10..80 turns/s, ~6-10 minutes
    python -m bench.peer --quick         # shorter windows
    python -m bench.peer --rates 20,40 --replicas 2 --own kafka,postgres
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import litellm_peer
from bench.accounting import CpuProbe, charged_ms, count_stored, cpu_summary, machine_info
from bench.load import ChatClient, Client, run_load, settle
from bench.run import REPORTS, Stack, finish, open_stack, run_bench

log = logging.getLogger("bench.peer")

SOMA, LITELLM = "soma", "litellm"


@dataclass(frozen=True)
class PeerPlan:
    warmup_s: float
    idle_rate: float  # the idle floor: what each side adds when nothing queues
    idle_s: float
    rates: tuple[float, ...]
    step_s: float
    timeout_s: float
    p99_limit_ms: float
    # An unreported run of each side at WARM_RATE first: JIT-compiled broker, warm caches
    # and pools on both sides, so the idle floor measures neither's start-up.
    warm_s: float


WARM_RATE = 10.0
BUSY_CORES = 0.25  # others' CPU in a window above which the report warns

# Up to 80: on a 2-core machine both sides fall over between 50 and 80 turns/s.
RATES = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)
FULL = PeerPlan(3, 3, 20, RATES, 15, 10, 2000, 8)
QUICK = PeerPlan(2, 3, 10, RATES, 6, 10, 2000, 4)


@dataclass
class Side:
    name: str
    client: Client
    charged: Callable[[], set[str]]  # the processes whose CPU is this side's
    dsn: str | None = None  # Soma: where its turns must be found stored
    stopped_at: float | None = None  # the first rate it did not sustain
    results: dict[float, dict[str, Any]] = field(default_factory=dict)


async def drive(
    side: Side,
    probe: CpuProbe,
    plan: PeerPlan,
    rate: float,
    duration: float,
    seed: int,
    prefix: str,
    up: float,
) -> dict[str, Any]:
    """One side at one rate: open-loop load, the window's CPU, then settle and (Soma) the
    check that every accepted turn was stored."""
    run = await run_load(
        side.client,
        rate=rate,
        warmup_s=plan.warmup_s,
        duration_s=duration,
        session_prefix=prefix,
        timeout_s=plan.timeout_s,
        seed=seed,
        on_window_start=probe.start,
    )
    cpu = probe.stop()
    summary = run.summary(up, plan.p99_limit_ms)
    summary["cpu"] = cpu_summary(cpu, len(run.measured))
    summary["cpu"]["side_ms_per_turn"] = charged_ms(summary["cpu"], side.charged())
    summary["settle_s"], probes = await settle(side.client, prefix, plan.timeout_s)
    if side.dsn is not None:
        ids = [t.turn_id for t in run.turns if t.turn_id] + probes
        summary["storage"] = await count_stored(side.dsn, ids)
    return summary


async def make_turns_key(stack: Stack) -> str:
    """A `turns` key of the default tenant, made with the sandbox's bootstrap key."""
    async with httpx.AsyncClient(base_url=stack.mesh.base_url, timeout=30) as http:
        r = await http.post(
            "/v1/keys",
            json={"label": "bench-peer", "scopes": ["turns"]},
            headers=stack.mesh.operator_headers,
        )
        r.raise_for_status()
        return str(r.json()["secret"])


async def peer_main(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.rates:
        plan = PeerPlan(
            **{**plan.__dict__, "rates": tuple(float(r) for r in args.rates.split(","))}
        )
    started = time.monotonic()
    venv = litellm_peer.ensure_installed()
    own = tuple(x for x in args.own.split(",") if x)
    stack = await open_stack(
        own=own,
        replicas=args.replicas,
        purpose="peer",
        GATEWAY_REQUIRE_AUTH="true",
        # One key stands for all the bench's callers, as LiteLLM's master key does: its
        # open streams are not capped at one caller's 64.
        MAX_STREAMS_PER_PRINCIPAL="100000",
        LLM_TRANSPORT=args.transport,
        LOG_LEVEL=args.log_level,
    )
    peer: litellm_peer.Peer | None = None
    sides: list[Side] = []
    report: dict[str, Any] = {
        "machine": machine_info(),
        "plan": plan.__dict__,
        "replicas": args.replicas,
        "own_servers": list(own),
        "soma": {"auth": "API key (turns scope)", "llm_transport": args.transport},
        "litellm": {"version": litellm_peer.VERSION, "workers": args.litellm_workers},
        "upstream_ttft_ms": stack.upstream_ttft_ms,
        "logs": str(stack.sandbox.dir),
        "rates": [],
    }
    try:
        log.info("starting LiteLLM proxy %s", litellm_peer.VERSION)
        peer = litellm_peer.start(
            venv, stack.fake_url + "/v1", stack.sandbox.dir, args.litellm_workers
        )
        litellm_pid = peer.proc.pid
        key = await make_turns_key(stack)
        gateway_port = int(stack.mesh.env["GATEWAY_PORT"])
        sides = [
            Side(
                SOMA,
                Client("127.0.0.1", gateway_port, {"authorization": f"Bearer {key}"}),
                lambda: stack.charged,
                dsn=stack.sandbox.postgres_dsn,
            ),
            Side(LITELLM, ChatClient("127.0.0.1", peer.port, peer.headers), lambda: {LITELLM}),
        ]
        probe = CpuProbe(lambda: {**stack.pids(), LITELLM: litellm_pid})
        up = stack.upstream_ttft_ms["used"]
        report["warm_up"] = {}
        for side in sides:
            log.info("[%s] warm-up at %.0f turns/s", side.name, WARM_RATE)
            prefix = f"{stack.sandbox.namespace}-{side.name}-warm"
            report["warm_up"][side.name] = await drive(
                side, probe, plan, WARM_RATE, plan.warm_s, 999, prefix, up
            )
        for i, rate in enumerate((plan.idle_rate, *plan.rates)):
            order = sides if i % 2 == 0 else sides[::-1]
            row: dict[str, Any] = {"rate": rate, "order": [s.name for s in order]}
            for side in order:
                if side.stopped_at is not None and not args.keep_going:
                    continue
                log.info("[%s] %.0f turns/s", side.name, rate)
                prefix = f"{stack.sandbox.namespace}-{side.name}-{i}"
                duration = plan.idle_s if i == 0 else plan.step_s
                result = await drive(side, probe, plan, rate, duration, 1000 + i, prefix, up)
                row[side.name] = side.results[rate] = result
                if not result["sustained"] and side.stopped_at is None:
                    side.stopped_at = rate
            report["rates"].append(row)
            if all(s.stopped_at is not None for s in sides) and not args.keep_going:
                break
    finally:
        for side in sides:
            await side.client.close()
        if peer is not None:
            peer.stop()
        await stack.close()
    best = {s.name: max_sustained(s) for s in sides}
    report["max_sustained"] = {
        **best,
        "ratio": best[SOMA] / best[LITELLM] if best.get(LITELLM) else None,
    }
    report["wall_s"] = time.monotonic() - started
    return report


def max_sustained(side: Side) -> float:
    """The highest rate sustained below the first one that was not (0: none)."""
    best = 0.0
    for rate, r in sorted(side.results.items()):
        if not r["sustained"]:
            break
        best = rate
    return best


def failures(report: dict[str, Any]) -> list[str]:
    """Lost or unstored Soma turns at any rate; answers short of tokens on either side."""
    found = []
    warm = report.get("warm_up", {})
    for row in [{"rate": WARM_RATE, "run": "warm-up ", **warm}, *report["rates"]]:
        soma = row.get(SOMA)
        if soma and soma["storage"]["stored"] < soma["storage"]["total"]:
            s = soma["storage"]
            found.append(
                f"soma {row.get('run', '')}at {row['rate']:.0f}/s: "
                f"{s['total'] - s['stored']} of {s['total']} accepted turns were not stored"
            )
        for name in (SOMA, LITELLM):
            if row.get(name) and row[name]["short_answers"]:
                found.append(
                    f"{name} {row.get('run', '')}at {row['rate']:.0f}/s: "
                    f"{row[name]['short_answers']} answers lacked some of the upstream's tokens"
                )
    return found


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _pair(r: dict[str, Any] | None, get: Callable[[dict[str, Any]], str]) -> str:
    return get(r) if r else "-"


def render(report: dict[str, Any]) -> str:
    """The side-by-side table (markdown), Soma's CPU by process, the verdict."""
    m, up = report["machine"], report["upstream_ttft_ms"]
    lines = [
        f"Soma Gateway vs LiteLLM proxy {report['litellm']['version']} "
        f"({report['litellm']['workers']} workers)  {m['date']}  commit {m['git_commit'][:10]}"
        f"{' (dirty)' if m['git_dirty'] else ''}  nproc {m['nproc']}  {m['cpu_model']}",
        f"fake upstream TTFT measured direct p50 {up['p50']:.1f} / p99 {up['p99']:.1f} ms "
        f"(subtracted: {up['used']:.1f}); Soma with an API key, {report['replicas']} "
        f"replica(s) per stage, LLM_TRANSPORT={report['soma']['llm_transport']}",
        "",
        "| rate | LiteLLM added TTFT p50 / p99 ms | Soma added TTFT p50 / p99 ms "
        "| done turns/s LiteLLM / Soma | errors LiteLLM / Soma | sustained LiteLLM / Soma "
        "| CPU ms/req LiteLLM / Soma | first |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ttft(r: dict[str, Any]) -> str:
        g = r["gateway_ttft_ms"]
        return f"{_f(g.get('p50'))} / {_f(g.get('p99'))}"

    for row in report["rates"]:
        lit, soma = row.get(LITELLM), row.get(SOMA)
        both = (lit, soma)
        lines.append(
            f"| {row['rate']:.0f} | {_pair(lit, ttft)} | {_pair(soma, ttft)} | "
            + " / ".join(_pair(r, lambda r: f"{r['completed_rate']:.1f}") for r in both)
            + " | "
            + " / ".join(_pair(r, lambda r: str(r["errors"])) for r in both)
            + " | "
            + " / ".join(_pair(r, lambda r: "yes" if r["sustained"] else "NO") for r in both)
            + " | "
            + " / ".join(_pair(r, lambda r: f"{r['cpu']['side_ms_per_turn']:.1f}") for r in both)
            + f" | {row['order'][0]} |"
        )
    best = report["max_sustained"]
    ratio = best["ratio"]
    lines += [
        "",
        f"highest sustained rate: LiteLLM {best[LITELLM]:.0f} turns/s, Soma {best[SOMA]:.0f} "
        f"turns/s, ratio Soma/LiteLLM {_f(ratio, 2)}",
        f"(sustained: < 1% errors, >= 95% of the arrivals done OK by the window's end + "
        f"{report['plan']['p99_limit_ms']:.0f} ms, generator lag p99 < 100 ms, p99 total < "
        f"{report['plan']['p99_limit_ms']:.0f} ms)",
    ]
    busy = max(
        (
            row[n]["cpu"]["other_cores"]
            for row in report["rates"]
            for n in (SOMA, LITELLM)
            if n in row
        ),
        default=0.0,
    )
    if busy > BUSY_CORES:
        # The scheduler shares the cores per process: a mesh of a dozen processes gets more
        # of a busy machine than a proxy of three, whatever either needs.
        lines.append(
            f"WARNING: other processes kept up to {busy:.2f} cores busy during a window; "
            "the comparison then favours the side with more processes (Soma). Re-run on an "
            "otherwise idle machine."
        )
    soma_rows = [row for row in report["rates"] if row.get(SOMA)]
    if soma_rows:
        names = sorted(
            soma_rows[-1][SOMA]["cpu"]["ms_per_turn"],
            key=lambda n: -soma_rows[-1][SOMA]["cpu"]["ms_per_turn"][n],
        )
        lines += ["", "CPU ms per turn by process (Soma's window; * = charged to Soma):"]
        lines.append(f"{'process':22}" + "".join(f"{r['rate']:>8.0f}" for r in soma_rows))
        charged = set(soma_rows[0][SOMA]["cpu"]["ms_per_turn"]) - {"fake_upstream", "loadgen"}
        for n in names:
            if n == LITELLM:
                continue
            cells = "".join(f"{_f(r[SOMA]['cpu']['ms_per_turn'].get(n), 2):>8}" for r in soma_rows)
            lines.append(f"{n + (' *' if n in charged else ''):22}{cells}")
        lines.append(
            f"{'not ours (cores)':22}"
            + "".join(f"{_f(r[SOMA]['cpu']['other_cores'], 2):>8}" for r in soma_rows)
        )
    lines += [
        "",
        "added TTFT = client TTFT - the fake's direct median; done = turns ending OK inside "
        "the window per s; CPU ms/req = the side's processes over its window / its requests",
        f"wall time {report['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows")
    parser.add_argument("--rates", help="rates after the idle floor, comma-separated turns/s")
    parser.add_argument("--keep-going", action="store_true", help="every rate on both sides")
    parser.add_argument("--replicas", type=int, default=1, help="processes of each stage worker")
    parser.add_argument(
        "--own",
        default="kafka,postgres",
        help="servers of the bench's own (default kafka,postgres; '' = the machine's shared "
        "ones, whose CPU for anything else they serve is then charged to Soma)",
    )
    parser.add_argument("--transport", default="auto", help="the llm_worker's LLM_TRANSPORT")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--log-level", default="INFO", help="the mesh's LOG_LEVEL")
    parser.add_argument("--report", type=Path, default=REPORTS / "peer.json")
    args = parser.parse_args()
    report = run_bench(peer_main(args))
    report["failures"] = failures(report)
    finish(report, args.report, render)


if __name__ == "__main__":
    main()
