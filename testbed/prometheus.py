"""A real Prometheus (and promtool) for the tests: the pinned build of deploy/install.sh,
the shipped scrape configuration re-pointed at a mesh, and its targets as the API shows them.

The binaries are the ones `deploy/install.sh dev` (or `observe`) builds from the Go module
proxy into `$SOMA_HOME/bin/prometheus-<PROMETHEUS_VERSION>/`, the version being the one
pinned in deploy/lib.sh, so a test never runs a stale build by accident.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway_runtime.settings import CommonSettings
from testbed.sandbox import ROOT

OBSERVABILITY = ROOT / "deploy" / "observability"
SCRAPE_CONFIG = OBSERVABILITY / "prometheus.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "soma-gateway.json"
JOB = "soma-gateway"


def pinned_version() -> str:
    lib = (ROOT / "deploy" / "lib.sh").read_text()
    match = re.search(r"^PROMETHEUS_VERSION=(\S+)$", lib, re.MULTILINE)
    if match is None:
        raise RuntimeError("no PROMETHEUS_VERSION in deploy/lib.sh")
    return match.group(1)


def binary(name: str) -> Path:
    """`prometheus` or `promtool`; FileNotFoundError says how to build it."""
    path = CommonSettings().soma_home / "bin" / f"prometheus-{pinned_version()}" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `bash deploy/install.sh dev` (or observe)")
    return path


def dashboard_queries(rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the Grafana dashboard, with Grafana's
    `$__rate_interval` replaced, so Prometheus and promtool can read them."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", rate_interval))
        for panel in board["panels"]
        for target in panel.get("targets", ())
    ]


def scrape_config(targets: Mapping[str, str]) -> dict[str, Any]:
    """deploy/observability/prometheus.yml with its gateway job scraping `targets`
    (service → host:port) instead of the local stack's ports, more often (the ingress's
    scrape may wait HEALTH_TIMEOUT_S, 2 s, for Kafka's view of the groups), and its rule
    files by absolute path (the copy lives elsewhere)."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="3s", scrape_timeout="3s", evaluation_interval="1s")
    config["rule_files"] = [str(OBSERVABILITY / f) for f in config.get("rule_files", ())]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"] = [
        {"targets": [address], "labels": {"service": service}}
        for service, address in targets.items()
    ]
    return config


def start(config: Mapping[str, Any], workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Prometheus on 127.0.0.1:`port` with `config`, its data and log in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    with open(workdir / "prometheus.log", "ab") as out:
        return subprocess.Popen(
            [
                str(binary("prometheus")),
                f"--config.file={config_file}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={workdir / 'data'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def gateway_targets(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    r = await client.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=5)
    r.raise_for_status()
    targets: list[dict[str, Any]] = r.json()["data"]["activeTargets"]
    return [t for t in targets if t["labels"].get("job") == JOB]


async def wait_all_up(
    url: str, expected: int, proc: subprocess.Popen[bytes], timeout: float = 60
) -> list[dict[str, Any]]:
    """Poll the targets API until `expected` gateway targets are all up; the last answer
    is in the TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}")
            try:
                targets = await gateway_targets(client, url)
            except httpx.HTTPError as exc:  # not listening yet
                last = exc
            else:
                last = [(t["labels"].get("service"), t["health"], t["lastError"]) for t in targets]
                if len(targets) == expected and all(t["health"] == "up" for t in targets):
                    return targets
            await asyncio.sleep(0.2)
    raise TimeoutError(f"gateway targets not all up in {timeout}s: {last}")


async def query(client: httpx.AsyncClient, url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; an error (bad PromQL) raises."""
    r = await client.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        raise ValueError(f"{expr}: {body.get('error', r.text)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
