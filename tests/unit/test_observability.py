"""deploy/observability/ checked offline by the real promtool: the scrape configuration, the
alerts and their own tests, the dashboard's PromQL; and the metric names they use exist.

promtool is the pinned build `deploy/install.sh dev` makes (testbed/prometheus.py).
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from testbed import prometheus
from testbed.prometheus import DASHBOARD, OBSERVABILITY, SCRAPE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
# Every module that defines metrics of a gateway process (imported: they register them).
METRIC_MODULES = (
    "gateway_runtime.metrics",
    "gateway_runtime.redis_gate",
    "ingress.metrics",
    "ingress.request_metrics",
    "llm_worker.metrics",
    "persistence_worker.metrics",
    "policy_worker.metrics",
)
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    try:
        tool = prometheus.binary("promtool")
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    return subprocess.run(
        [str(tool), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_scrape_configuration_and_its_rules() -> None:
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alerts_fire_on_what_they_should() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, as a recording rule: `promtool check rules` parses its PromQL."""
    queries = prometheus.dashboard_queries()
    assert len(queries) >= 20
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, (_, q) in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_dashboard_is_grafana_json_with_one_datasource_variable() -> None:
    board = yaml.safe_load(DASHBOARD.read_text())  # JSON is YAML
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    [variable] = board["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def _defined_series() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = {"up"}
    for family in REGISTRY.collect():  # labelled families without samples too
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def _series_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by `{`, `[` or `)` that
    are not functions, keywords or label names (labels appear only inside braces and
    `by (...)`, which are removed first)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if "_" in w and not w.startswith("histogram_")} | ({"up"} & words)


def test_dashboard_and_alerts_use_only_metrics_the_gateway_defines() -> None:
    defined = _defined_series()
    alerts = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    exprs = [q for _, q in prometheus.dashboard_queries()]
    exprs += [str(r["expr"]) for g in alerts["groups"] for r in g["rules"]]
    used = set().union(*(_series_in(e) for e in exprs))
    assert used - defined == set()
    # what issue 12 asks the dashboard to show
    for name in (
        "http_server_request_duration_seconds_bucket",
        "soma_stage_handle_seconds_bucket",
        "soma_stage_consumer_lag",
        "soma_dead_letters_total",
        "soma_llm_breaker_state",
        "soma_budget_tokens",
        "soma_turn_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_duration_seconds_bucket",
    ):
        assert name in used, name


def test_scrape_targets_are_the_local_stacks_ports() -> None:
    """The ingress on GATEWAY_PORT, each worker on WORKER_METRICS_PORT_BASE + its place in
    deploy/services.sh's SERVICES (+1), as services.sh gives them out."""
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "stack.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    script = (ROOT / "deploy" / "services.sh").read_text()
    match = re.search(r"^SERVICES=\(([^)]*)\)", script, re.MULTILINE)
    assert match
    expected = {
        name: f"127.0.0.1:{env['GATEWAY_PORT']}"
        if name == "ingress"
        else f"127.0.0.1:{int(env['WORKER_METRICS_PORT_BASE']) + i + 1}"
        for i, name in enumerate(match.group(1).split())
    }
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == prometheus.JOB]
    found = {}
    for static in job["static_configs"]:
        [target] = static["targets"]
        found[static["labels"]["service"]] = target
    assert found == expected
