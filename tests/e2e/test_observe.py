"""The seed's checklist item "Prometheus shows Gateway targets UP", with a real Prometheus.

The pinned build (deploy/install.sh) runs the shipped scrape configuration
(deploy/observability/prometheus.yml, alerts included) re-pointed at the test mesh: the
ingress's /metrics and each stage worker's metrics port. After one turn from ingress to
storage, every target must be up, every query of the Grafana dashboard must evaluate on
the real server, and the series the dashboard is about must be there.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testbed import prometheus
from testbed.mesh import WORKERS, Mesh
from testbed.sandbox import Sandbox, free_port
from tests.turns import turn, wait_stored

# What one completed turn puts on the targets' /metrics (dead letters, retries, fallbacks
# and failures appear only once one happens).
AFTER_ONE_TURN = (
    "http_server_request_duration_seconds_bucket",
    "soma_stage_handle_seconds_bucket",
    "soma_stage_events_total",
    "soma_stage_consumer_lag",
    "soma_stage_consumer_members",
    "soma_llm_breaker_state",
    "soma_budget_limit_tokens",
    "soma_budget_tokens",
    "soma_turn_duration_seconds_bucket",
    "soma_tenant_tokens_total",
    "gen_ai_client_operation_duration_seconds_bucket",
    "gen_ai_client_token_usage_bucket",
    "gen_ai_server_time_to_first_token_seconds_bucket",
    "gen_ai_server_time_per_output_token_seconds_bucket",
)


@dataclass
class Observer:
    url: str
    targets: dict[str, str]  # service -> host:port
    proc: subprocess.Popen[bytes]


@pytest.fixture
def observer(mesh: Mesh, tmp_path: Path) -> Iterator[Observer]:
    """A real Prometheus scraping the mesh's ingress and every stage worker."""
    targets = {"ingress": f"127.0.0.1:{mesh.env['GATEWAY_PORT']}"}
    targets |= {w: f"127.0.0.1:{mesh.env_of[w]['METRICS_PORT']}" for w in WORKERS}
    port = free_port()
    proc = prometheus.start(prometheus.scrape_config(targets), tmp_path, port)
    try:
        yield Observer(f"http://127.0.0.1:{port}", targets, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"prometheus log: {tmp_path / 'prometheus.log'}")


async def test_prometheus_shows_every_gateway_target_up(
    client: httpx.AsyncClient, sandbox: Sandbox, observer: Observer
) -> None:
    url, targets = observer.url, observer.targets
    events = await turn(client)
    assert events[-1].type == "assistant.final", events
    await wait_stored(sandbox.postgres_dsn, events[-1].turn_id)

    up = await prometheus.wait_all_up(url, len(targets), observer.proc, timeout=60)
    assert {t["labels"]["service"] for t in up} == set(targets)
    assert {t["scrapeUrl"].split("/")[2] for t in up} == set(targets.values())

    async with httpx.AsyncClient() as http:
        missing = await _wait_for_series(http, url, AFTER_ONE_TURN, timeout=30)
        assert missing == set(), f"not in Prometheus: {missing}"
        for _, expr in prometheus.dashboard_queries("30s"):
            await prometheus.query(http, url, expr)  # raises on a query the server rejects
        # the numbers are the turn's: every stage handled an event, the turn was stored
        handled = await prometheus.query(
            http, url, 'sum by (stage) (soma_stage_events_total{outcome="ok"})'
        )
        stages = {r["metric"]["stage"] for r in handled if float(r["value"][1]) > 0}
        assert {"policy", "context", "llm", "persistence"} <= stages
        lag = await prometheus.query(http, url, "max by (stage) (soma_stage_consumer_lag)")
        assert {r["metric"]["stage"] for r in lag} >= {"policy", "context", "llm", "persistence"}
        firing = await prometheus.query(http, url, 'ALERTS{alertname="SomaTargetDown"}')
        assert firing == []


async def _wait_for_series(
    http: httpx.AsyncClient, url: str, names: tuple[str, ...], timeout: float
) -> set[str]:
    """Poll the series names Prometheus holds until `names` are all there; what is still
    missing at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get(f"{url}/api/v1/label/__name__/values", timeout=5)
        missing = set(names) - set(r.json()["data"])
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.5)
