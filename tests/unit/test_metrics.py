"""What the gateway's own metrics record: request latency by route template, the GenAI
histograms of a model call, and a stored turn's duration and tokens."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from prometheus_client import REGISTRY

from adapters.tenants import TenantDirectory
from ingress.metrics import BUDGET_LIMIT, refresh_budget_gauges, refresh_stage_gauges
from ingress.request_metrics import RequestMetrics
from llm_worker.metrics import genai_labels, observe_call
from persistence_worker.metrics import observe_stored
from schemas.events import ModelProfile, TurnCompleted, TurnRequested, Usage


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestMetrics)

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise HTTPException(404)
        return {"id": thing_id}

    return app


async def test_requests_are_timed_by_route_template_method_and_status() -> None:
    def count(route: str, status: str, method: str = "GET") -> float:
        labels = {"http_request_method": method, "http_route": route}
        labels["http_response_status_code"] = status
        return sample("http_server_request_duration_seconds_count", **labels)

    template = "/v1/things/{thing_id}"
    before = (count(template, "200"), count(template, "404"), count("other", "404"))
    before_odd = count("other", "404", "_OTHER")
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/things/a")).status_code == 200
        assert (await client.get("/v1/things/b")).status_code == 200
        assert (await client.get("/v1/things/missing")).status_code == 404
        # made-up paths and methods never become labels of their own
        assert (await client.get("/no/such/path/123")).status_code == 404
        await client.request("BREW", "/no/such/path/456")
    after = (count(template, "200"), count(template, "404"), count("other", "404"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    assert count("other", "404", "_OTHER") == before_odd + 1
    raw = {"http_route": "/no/such/path/123"}  # no label holds a raw path
    assert REGISTRY.get_sample_value("http_server_request_duration_seconds_count", raw) is None


def test_a_model_call_records_duration_first_token_per_token_and_usage() -> None:
    profile = ModelProfile(model="openai/unit-model")
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "unit-model",
    }
    observe_call(profile, started=10.0, first_token=10.25, ended=11.25, usage=Usage(30, 11))
    assert sample("gen_ai_client_operation_duration_seconds_sum", **labels, error_type="") == 1.25
    assert sample("gen_ai_server_time_to_first_token_seconds_sum", **labels) == 0.25
    # 1 s for the 10 tokens after the first
    assert sample("gen_ai_server_time_per_output_token_seconds_sum", **labels) == 0.1
    assert sample("gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="input") == 30
    assert sample("gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="output") == 11

    # a failed call: its duration by error type, no time per token, no usage unreported
    observe_call(profile, started=0.0, first_token=None, ended=2.0, usage=None, error_type="500")
    assert sample("gen_ai_client_operation_duration_seconds_count", **labels, error_type="500") == 1
    assert sample("gen_ai_server_time_per_output_token_seconds_count", **labels) == 1
    assert sample("gen_ai_client_token_usage_count", **labels, gen_ai_token_type="input") == 1


def test_genai_labels_name_the_provider_and_never_an_address() -> None:
    assert genai_labels(ModelProfile(model="anthropic/claude-x")) == (
        "chat",
        "anthropic",
        "claude-x",
    )
    assert genai_labels(ModelProfile(model="bedrock/titan"))[1:] == ("aws.bedrock", "titan")
    assert genai_labels(ModelProfile(model="gpt-4o"))[1] == "openai"
    assert genai_labels(ModelProfile(model="http://10.0.0.1/v1/m"))[1:] == ("unknown", "redacted")


def test_a_stored_turn_counts_its_duration_and_its_tenants_tokens() -> None:
    request = TurnRequested(
        event_id="t-1",
        session_id="s-1",
        message="hi",
        created_at_ms=int(time.time() * 1000) - 1500,
        tenant="unit-tenant",
    )
    turn = TurnCompleted(
        request=request,
        principal="p",
        status="completed",
        completed_at_ms=int(time.time() * 1000),
        usage=Usage(7, 5),
        answer="ok",
        model="openai/fake",
        reserved_tokens=0,
        error=None,
    )
    before = sample("soma_turn_duration_seconds_sum", status="completed")
    observe_stored(turn)
    took = sample("soma_turn_duration_seconds_sum", status="completed") - before
    assert 1.5 <= took < 10
    assert sample("soma_tenant_tokens_total", tenant="unit-tenant", token_type="input") == 7
    assert sample("soma_tenant_tokens_total", tenant="unit-tenant", token_type="output") == 5


class _Groups:
    def __init__(self, *reports: dict[str, dict[str, Any]]) -> None:
        self.reports = list(reports)

    async def report(self, timeout: float) -> dict[str, dict[str, Any]]:
        return self.reports.pop(0)


class _Pool:
    """asyncpg.Pool's `fetch`, answering the ledger's one query of today's rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        assert "budget_counters" in query
        return self.rows


async def test_stage_lag_of_a_group_not_inspected_is_absent_not_stale() -> None:
    ok = {"status": "ok", "lag": 7, "members": 2}
    groups = _Groups({"unit-stage": ok}, {"unit-stage": {"status": "unknown", "error": "x"}})
    res: Any = SimpleNamespace(groups=groups, settings=SimpleNamespace(health_timeout_s=1.0))
    await refresh_stage_gauges(res)
    assert sample("soma_stage_consumer_lag", stage="unit-stage") == 7
    assert sample("soma_stage_consumer_members", stage="unit-stage") == 2
    assert sample("soma_stage_consumer_live", stage="unit-stage") == 1
    await refresh_stage_gauges(res)
    assert REGISTRY.get_sample_value("soma_stage_consumer_lag", {"stage": "unit-stage"}) is None


async def test_budget_gauges_show_every_budgeted_persona_of_the_tenants_file(
    tmp_path: Path,
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "tenants:\n"
        "  free: {}\n"  # no budget: no gauges (its tokens are in soma_tenant_tokens_total)
        "  paid: {tokens_per_day: 1000, personas: {bot: {tokens_per_day: 50}, idle: {}}}\n"
    )
    rows = [
        {"tenant": "paid", "persona": "default", "used": 400, "reserved": 30},
        {"tenant": "stranger", "persona": "default", "used": 9, "reserved": 0},  # not in file
    ]
    res: Any = SimpleNamespace(
        auth=SimpleNamespace(tenants=TenantDirectory(tenants)), pool=_Pool(rows)
    )
    await refresh_budget_gauges(res)
    limits = {
        (s.labels["tenant"], s.labels["persona"]): s.value
        for m in BUDGET_LIMIT.collect()
        for s in m.samples
    }
    assert limits == {("paid", "default"): 1000, ("paid", "bot"): 50, ("paid", "idle"): 1000}
    assert sample("soma_budget_tokens", tenant="paid", persona="default", state="used") == 400
    assert sample("soma_budget_tokens", tenant="paid", persona="default", state="reserved") == 30
    assert sample("soma_budget_tokens", tenant="paid", persona="bot", state="used") == 0
