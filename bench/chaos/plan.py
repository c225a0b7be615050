"""What a chaos run does, and for how long: the load's rate, the faults in order, the gaps.

The upstream's faults come last: its circuit breaker stays open for BREAKER_COOLDOWN_S
(30 s by default) after a storm, which would otherwise bleed into the next fault's window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from testbed.mesh import REPLICATED, WORKERS, replica_names

FaultKind = Literal["kill", "restart", "outage", "upstream"]


@dataclass(frozen=True)
class Fault:
    """One fault: `kill` (kill -9 of the process `target`, started again after
    `Plan.kill_restart_s`), `restart` (the sandbox's server `target` stopped and started
    again at once), `outage` (the server stopped for `Plan.outage_s`), `upstream` (the fake
    model upstream switched to the mode `target` for `Plan.outage_s`)."""

    name: str
    kind: FaultKind
    target: str


# The runner starts two ingresses and two of every REPLICATED stage worker, one of the rest.
REPLICAS = 2


def _kill(service: str) -> Fault:
    """kill -9 of the service's second process where it has two (the first keeps taking
    turns), else of its only one (the dead-letter index)."""
    count = REPLICAS if service == "ingress" or service in REPLICATED else 1
    return Fault(f"kill -9 {service}", "kill", replica_names(service, count)[-1])


# kill -9 of one process of the ingress and of every stage worker (schemas/stages.py);
# then the servers; then the upstream.
FAULTS: tuple[Fault, ...] = (
    *(_kill(service) for service in ("ingress", *WORKERS)),
    Fault("Kafka broker restart", "restart", "kafka"),
    Fault("Redis restart", "restart", "redis"),
    Fault("Postgres restart", "restart", "postgres"),
    Fault("OpenFGA outage", "outage", "openfga"),
    Fault("OPA outage", "outage", "opa"),
    Fault("upstream mid-stream resets", "upstream", "reset"),
    Fault("upstream 5xx storm", "upstream", "error_500"),
)


@dataclass(frozen=True)
class Plan:
    rate: float  # turns per second, Poisson arrivals (open loop)
    lead_s: float  # load before the first fault
    kill_restart_s: float  # a killed process is started again after this long
    outage_s: float  # an outage or an upstream failure mode lasts this long
    gap_s: float  # load between a fault's end and the next fault
    tail_s: float  # load after the last fault
    drain_s: float  # after the load stops: a turn without an outcome by then has none


FULL = Plan(rate=10, lead_s=20, kill_restart_s=5, outage_s=15, gap_s=20, tail_s=45,
            drain_s=120)  # fmt: skip
QUICK = Plan(rate=10, lead_s=10, kill_restart_s=2, outage_s=4, gap_s=4, tail_s=35,
             drain_s=120)  # fmt: skip
