"""`python -m bench.chaos [--quick]`: the chaos run; prints its table, keeps it.

The table goes to docs/reliability.md (the block of this kind of run), the details (every
turn that was stuck, lost or doubled, the processes that died on their own, the plan) to
bench/reports/chaos-<full|quick>.json. Exit 1 when a turn was lost, stuck or doubled (two
finals, or a final and an error).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bench.accounting import machine_info
from bench.chaos import report, runner
from bench.chaos.plan import FAULTS, FULL, QUICK
from bench.chaos.traffic import Turn
from bench.chaos.verdict import Outcomes
from testbed.sandbox import ROOT


def _turn(t: Turn) -> dict[str, Any]:
    d = dataclasses.asdict(t)
    d["finals"] = sorted(t.finals)
    return d


def details(result: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    o: Outcomes = result["outcomes"]
    suspect = set(o.stuck) | set(o.lost) | set(o.answered_twice) | set(o.both_outcomes)
    return {
        "machine": info,
        "plan": result["plan"],
        "namespace": result["namespace"],
        "logs": result["logs"],
        "load_s": result["load_s"],
        "cpu": result["cpu"],
        "baseline": result["baseline"],
        "followed_when_cut": result["followed_when_cut"],
        "deaths": [dataclasses.asdict(d) for d in result["deaths"]],
        "outcomes": dataclasses.asdict(o),
        "recoveries": [dataclasses.asdict(r) for r in result["recoveries"]],
        "topics": {k: dataclasses.asdict(v) for k, v in result["topics"].items()},
        "suspect_turns": [_turn(t) for t in result["turns"] if t.turn_id in suspect],
    }


def eos() -> str:
    """Whether the code under test runs its stages in Kafka transactions (issue 12's
    exactly-once work): the duplicate records per topic mean something else with them."""
    if importlib.util.find_spec("gateway_runtime.transactions") is not None:
        return "stage outputs in Kafka transactions (gateway_runtime/transactions.py)"
    return "stage outputs at least once (no Kafka transactions in this code)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2 minutes of load, short faults")
    parser.add_argument("--rate", type=float, help="turns per second (default 10)")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/reliability.md alone")
    parser.add_argument(
        "--only", default="", help="comma-separated words: only the faults whose name has one"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for chatty in ("httpx", "aiokafka"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    if args.rate:
        plan = dataclasses.replace(plan, rate=args.rate)
    mode = "quick" if args.quick else "full"
    info = machine_info()
    words = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    faults = tuple(f for f in FAULTS if not words or any(w in f.name.lower() for w in words))
    result = asyncio.run(runner.run(plan, faults))
    o: Outcomes = result["outcomes"]
    extra = f"Rate {plan.rate:g} turns/s; {eos()}. " + report.deaths(result["deaths"])
    command = "make chaos" + (" CHAOS_ARGS=--quick" if args.quick else "")
    block = report.header(
        info, command, mode, result["load_s"], result["cpu"], result["baseline"], extra
    )
    block += report.table(o, result["topics"], result["recoveries"], result["namespace"])
    print("\n".join(block))
    out = ROOT / "bench" / "reports" / f"chaos-{mode}.json"
    out.write_text(json.dumps(details(result, info), indent=1, default=str) + "\n")
    every = Path(result["logs"]) / "turns.json"
    every.write_text(json.dumps([_turn(t) for t in result["turns"]]) + "\n")
    print(f"details: {out}; every turn: {every}")
    if not args.no_doc and faults == FAULTS:
        report.write_doc(mode, block)
    bad = o.stuck or o.lost or o.answered_twice or o.both_outcomes or o.stored_twice
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
