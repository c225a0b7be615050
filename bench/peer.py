"""`python -m bench.peer` (`make bench-peer`): the gateway beside LiteLLM proxy, one run.

Both sit in front of the same fake upstream (bench/fake_upstream.py: 50 ms to the first
token, then 20 tokens 5 ms apart) on the same machine, and the same open-loop generator
(bench/load.py) drives them with the same arrivals: at each rate every side gets the Poisson
schedule of one seed, one side after the other, the order rotating from rate to rate
(so no side always meets a machine another just warmed or heated).

- Soma: the whole mesh in a sandbox (bench/run.py's `open_stack`), driven as a client
  with an API key would (a `turns` key made with the sandbox's bootstrap key), through
  either of its APIs (`--gateway-api`, both by default, each a side of its own):
  - `soma` (session API): POST the message on a new session, then its events stream
    (which replays the turn from its start), TTFT at the first answer text, the end at
    `assistant.final`;
  - `soma_chat` (OpenAI API): the very request sent to LiteLLM below, key as Bearer,
    TTFT at the first chunk with answer text, the end at `data: [DONE]`. Its turn id is
    in the completion's id (`chatcmpl-<turn id>`), its session in `X-Session-Id`.
- LiteLLM proxy at a pinned version in a venv of its own (bench/litellm_peer.py), two
  workers, its master key as Bearer: streamed `POST /v1/chat/completions` with
  `stream_options.include_usage`, TTFT at the first answer text, the end at
  `data: [DONE]`.

Added TTFT is the client's TTFT minus the fake's own median, measured direct. CPU per
request is each side's own processes over its window: for Soma the ingress, every worker
and its backing services (Kafka, Postgres, Redis, OpenFGA, OPA: whole process trees, so
on the machine's shared Kafka and Postgres anything else they serve is charged too; see
`--own`), for LiteLLM its proxy's process tree; the fake and the generator are apart.
A side stops at the first rate it does not sustain (`--keep-going`: it runs them all).
The run fails (exit 1) when a Soma turn that was accepted is not found stored (in the
session the client was told), a Soma chat completion lacks its turn id or its usage
chunk, or an answer on any side lacks some of the fake's tokens.

    python -m bench.peer                 # idle floor + 10..80 turns/s, ~10-15 minutes
    python -m bench.peer --quick         # shorter windows
    python -m bench.peer --rates 20,40 --replicas 2 --own kafka,postgres
    python -m bench.peer --gateway-api chat   # LiteLLM and the gateway's chat completions
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bench import litellm_peer
from bench.accounting import CpuProbe, charged_ms, count_stored, cpu_summary, machine_info
from bench.load import ChatClient, Client, run_load, settle
from bench.run import REPORTS, Stack, finish, open_stack, run_bench

log = logging.getLogger("bench.peer")

SOMA, SOMA_CHAT, LITELLM = "soma", "soma_chat", "litellm"
GATEWAY_SIDES = (SOMA, SOMA_CHAT)
LABELS = {SOMA: "gateway session", SOMA_CHAT: "gateway chat", LITELLM: "LiteLLM"}
# What `--gateway-api` runs on the gateway's side.
GATEWAY_APIS = {"session": (SOMA,), "chat": (SOMA_CHAT,), "both": (SOMA, SOMA_CHAT)}
# Both APIs are driven with what a LiteLLM proxy user sends: the model by its name.
MODEL = "fake"


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
    # and pools on both sides, so the idle floor measures neither's start-up. A fresh
    # broker's JIT needs a minute or more of transactions: with 8 s the gateway's idle
    # floor read 43 ms and its broker 48 ms of CPU a turn at 10/s; after 90 s, 29 and 26.
    warm_s: float


WARM_RATE = 10.0
BUSY_CORES = 0.25  # others' CPU in a window above which the report warns

# Up to 120: on a 2-core machine LiteLLM falls over between 50 and 60 turns/s, the
# gateway between 90 and 110. A side stops at the first rate it does not sustain.
RATES = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0)
FULL = PeerPlan(3, 3, 20, RATES, 15, 10, 2000, 90)
QUICK = PeerPlan(2, 3, 10, RATES, 6, 10, 2000, 45)


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
        sessions = {t.turn_id: t.session_id for t in run.turns if t.turn_id and t.session_id}
        summary["storage"] = await count_stored(side.dsn, ids, sessions=sessions)
        # An answered turn whose id the client never saw would escape the check above.
        summary["without_turn_id"] = sum(1 for t in run.turns if t.ok and not t.turn_id)
    return summary


def order_at(sides: list[Side], i: int) -> list[Side]:
    """The sides' order at the i-th rate: rotated by one each rate, so every side goes
    first, second, ... in turn (two sides: alternating)."""
    k = i % len(sides) if sides else 0
    return sides[k:] + sides[:k]


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
        plan = replace(plan, rates=tuple(float(r) for r in args.rates.split(",")))
    if args.warm_s is not None:
        plan = replace(plan, warm_s=args.warm_s)
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
        "soma": {
            "auth": "API key (turns scope)",
            "llm_transport": args.transport,
            "apis": list(GATEWAY_APIS[args.gateway_api]),
        },
        "litellm": {"version": litellm_peer.VERSION, "workers": args.litellm_workers},
        "request": {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}},
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
        bearer = {"authorization": f"Bearer {key}"}
        gateway_clients: dict[str, Client] = {
            SOMA: Client("127.0.0.1", gateway_port, bearer),
            SOMA_CHAT: ChatClient(
                "127.0.0.1", gateway_port, bearer, model=MODEL, include_usage=True
            ),
        }
        sides = [
            Side(name, gateway_clients[name], lambda: stack.charged, stack.sandbox.postgres_dsn)
            for name in GATEWAY_APIS[args.gateway_api]
        ]
        sides.append(
            Side(
                LITELLM,
                ChatClient("127.0.0.1", peer.port, peer.headers, model=MODEL, include_usage=True),
                lambda: {LITELLM},
            )
        )
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
            order = order_at(sides, i)
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
    report["max_sustained"] = {**best, **ratios(best)}
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


def ratios(best: dict[str, float]) -> dict[str, float | None]:
    """Each gateway API's highest sustained rate over LiteLLM's (`ratio`: the session
    API's, as before the chat side existed; `ratio_chat`: the chat completions')."""
    keys = {SOMA: "ratio", SOMA_CHAT: "ratio_chat"}
    lit = best.get(LITELLM)
    return {keys[n]: (best[n] / lit if lit else None) for n in GATEWAY_SIDES if n in best}


def failures(report: dict[str, Any]) -> list[str]:
    """Lost or unstored Soma turns at any rate (either API); a chat completion without its
    turn id or (asked for) its usage chunk; answers short of tokens on any side."""
    found = []
    warm = report.get("warm_up", {})
    for row in [{"rate": WARM_RATE, "run": "warm-up ", **warm}, *report["rates"]]:
        where = f"{row.get('run', '')}at {row['rate']:.0f}/s"
        for name in GATEWAY_SIDES:
            r = row.get(name)
            if not r:
                continue
            s = r["storage"]
            if s["stored"] < s["total"]:
                found.append(
                    f"{name} {where}: {s['total'] - s['stored']} of {s['total']} accepted "
                    "turns were not stored"
                )
            if s.get("in_session", 0) < s.get("with_session", 0):
                found.append(
                    f"{name} {where}: {s['with_session'] - s['in_session']} turns were not "
                    "stored in the session the client was told"
                )
            if r.get("without_turn_id"):
                found.append(f"{name} {where}: {r['without_turn_id']} answers had no turn id")
            if name == SOMA_CHAT and r["usage_chunks"] < r["ok"]:
                found.append(
                    f"{name} {where}: {r['ok'] - r['usage_chunks']} of {r['ok']} streams "
                    "lacked the usage chunk (stream_options.include_usage)"
                )
        for name in (*GATEWAY_SIDES, LITELLM):
            if row.get(name) and row[name]["short_answers"]:
                found.append(
                    f"{name} {where}: "
                    f"{row[name]['short_answers']} answers lacked some of the upstream's tokens"
                )
    return found


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def sides_of(report: dict[str, Any]) -> list[str]:
    """The sides a report ran, gateway APIs first."""
    ran = {n for row in report["rates"] for n in (*GATEWAY_SIDES, LITELLM) if n in row}
    return [n for n in (*GATEWAY_SIDES, LITELLM) if n in ran]


def render(report: dict[str, Any]) -> str:
    """The side-by-side table (markdown, a row per rate and side), the gateway's CPU by
    process for each of its APIs, the verdict."""
    m, up = report["machine"], report["upstream_ttft_ms"]
    names = sides_of(report)
    lines = [
        f"Soma Gateway vs LiteLLM proxy {report['litellm']['version']} "
        f"({report['litellm']['workers']} workers)  {m['date']}  commit {m['git_commit'][:10]}"
        f"{' (dirty)' if m['git_dirty'] else ''}  nproc {m['nproc']}  {m['cpu_model']}",
        f"fake upstream TTFT measured direct p50 {up['p50']:.1f} / p99 {up['p99']:.1f} ms "
        f"(subtracted: {up['used']:.1f}); Soma with an API key, {report['replicas']} "
        f"replica(s) per stage, LLM_TRANSPORT={report['soma']['llm_transport']}",
        "gateway session = POST /v1/session/message, then its events stream; "
        + ("gateway chat and " if SOMA_CHAT in names else "")
        + "LiteLLM = streamed POST /v1/chat/completions (model `fake`, "
        "stream_options.include_usage), the same request to each",
        "",
        "| rate | side | added TTFT p50 / p99 ms | done turns/s | errors | sustained "
        "| CPU ms/req | stored | order |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rates"]:
        for name in names:
            r = row.get(name)
            if not r:
                continue
            g = r["gateway_ttft_ms"]
            storage = r.get("storage")
            stored = f"{storage['stored']}/{storage['total']}" if storage else "-"
            lines.append(
                f"| {row['rate']:.0f} | {LABELS[name]} | {_f(g.get('p50'))} / {_f(g.get('p99'))} "
                f"| {r['completed_rate']:.1f} | {r['errors']} "
                f"| {'yes' if r['sustained'] else 'NO'} | {r['cpu']['side_ms_per_turn']:.1f} "
                f"| {stored} | {row['order'].index(name) + 1} of {len(row['order'])} |"
            )
    best = report["max_sustained"]
    verdict = ", ".join(f"{LABELS[n]} {best[n]:.0f}" for n in names if n in best)
    ratio = "; ".join(
        f"{LABELS[n]} / LiteLLM {_f(best.get(k), 2)}"
        for n, k in ((SOMA, "ratio"), (SOMA_CHAT, "ratio_chat"))
        if k in best
    )
    lines += [
        "",
        f"highest sustained rate (turns/s): {verdict}; ratio {ratio}",
        f"(sustained: < 1% errors, >= 95% of the arrivals done OK by the window's end + "
        f"{report['plan']['p99_limit_ms']:.0f} ms, generator lag p99 < 100 ms, p99 total < "
        f"{report['plan']['p99_limit_ms']:.0f} ms)",
    ]
    busy = max(
        (row[n]["cpu"]["other_cores"] for row in report["rates"] for n in names if n in row),
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
    for name in GATEWAY_SIDES:
        lines += _cpu_by_process(report, name)
    lines += [
        "",
        "added TTFT = client TTFT - the fake's direct median; done = turns ending OK inside "
        "the window per s; CPU ms/req = the side's processes over its window / its requests; "
        "stored = the side's turns found in Postgres / its accepted turns (with the probes)",
        f"wall time {report['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


def _cpu_by_process(report: dict[str, Any], name: str) -> list[str]:
    """CPU ms per turn of every process in one gateway side's windows, rate by rate."""
    rows = [row for row in report["rates"] if row.get(name)]
    if not rows:
        return []
    last = rows[-1][name]["cpu"]["ms_per_turn"]
    procs = sorted(last, key=lambda n: -last[n])
    lines = ["", f"CPU ms per turn by process ({LABELS[name]}'s windows; * = charged to Soma):"]
    lines.append(f"{'process':22}" + "".join(f"{r['rate']:>8.0f}" for r in rows))
    charged = set(rows[0][name]["cpu"]["ms_per_turn"]) - {"fake_upstream", "loadgen"}
    for proc in procs:
        if proc == LITELLM:
            continue
        cells = "".join(f"{_f(r[name]['cpu']['ms_per_turn'].get(proc), 2):>8}" for r in rows)
        lines.append(f"{proc + (' *' if proc in charged else ''):22}{cells}")
    lines.append(
        f"{'not ours (cores)':22}"
        + "".join(f"{_f(r[name]['cpu']['other_cores'], 2):>8}" for r in rows)
    )
    return lines


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
    parser.add_argument(
        "--gateway-api",
        choices=sorted(GATEWAY_APIS),
        default="both",
        help="the gateway's side(s): session (/v1/session/message + events stream), chat "
        "(/v1/chat/completions, the request LiteLLM gets), or both (default), each a side",
    )
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument(
        "--warm-s", type=float, help="each side's unreported warm-up at 10 turns/s, seconds"
    )
    parser.add_argument("--log-level", default="INFO", help="the mesh's LOG_LEVEL")
    parser.add_argument("--report", type=Path, default=REPORTS / "peer.json")
    args = parser.parse_args()
    report = run_bench(peer_main(args))
    report["failures"] = failures(report)
    finish(report, args.report, render)


if __name__ == "__main__":
    main()
