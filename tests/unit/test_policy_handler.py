"""The policy stage's decisions with in-memory twins of OpenFGA, OPA and the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.tenants import TenantDirectory
from gateway_runtime.delivery import Delivery, set_delivery
from gateway_runtime.errors import AuthzUnavailable, PolicyUnavailable
from gateway_runtime.ports import BudgetUsage, Decision, Reservation
from policy_worker.handler import PolicyHandler
from schemas.events import ErrorInfo, TurnAuthorized, TurnRequested
from schemas.topics import Topics


@dataclass
class Recorder:
    events: list[tuple[str, Any]] = field(default_factory=list)

    async def publish(self, session_id: str, turn_id: str, kind: str, data: Any, **_: Any) -> str:
        self.events.append((kind, data))
        return "1-0"

    async def publish_error(self, session_id: str, turn_id: str, error: ErrorInfo) -> None:
        self.events.append(("error", error))


@dataclass
class Fga:
    allowed: bool = True
    down: bool = False

    async def check(self, subject_user: str, relation: str, obj: str) -> bool:
        if self.down:
            raise AuthzUnavailable("openfga down")
        return self.allowed


@dataclass
class Opa:
    decision: Decision = field(default_factory=lambda: Decision(True, "ok", ""))
    down: bool = False
    inputs: list[dict[str, Any]] = field(default_factory=list)

    async def decide(self, policy_input: dict[str, Any]) -> Decision:
        self.inputs.append(policy_input)
        if self.down:
            raise PolicyUnavailable("opa down")
        return self.decision


@dataclass
class Admissions:
    """Admits a turn's first record only (by event_id), like the Postgres adapter."""

    seen: dict[str, Delivery] = field(default_factory=dict)

    async def admit(self, event_id: str, delivery: Delivery) -> bool:
        return self.seen.setdefault(event_id, delivery) == delivery


@dataclass
class Ledger:
    grant: bool = True

    async def usage(self, tenant: str, persona: str) -> BudgetUsage:
        return BudgetUsage(0, 0, 100)

    async def reserve(
        self, turn_id: str, tenant: str, persona: str, estimate: int, budget: int
    ) -> Reservation:
        return Reservation(self.grant, estimate if self.grant else 0, BudgetUsage(90, 5, 100))


@pytest.fixture
def tenants(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n  acme:\n    tokens_per_day: 100\n    max_output_tokens: 10\n"
        "  open:\n    fail_open: true\n"
    )
    return TenantDirectory(path)


def _turn(**overrides: Any) -> TurnRequested:
    fields = dict(
        event_id="e1",
        session_id="s1",
        message="12345678",
        created_at_ms=1,
        tenant="acme",
        principal="key:abc",
    )
    fields.update(overrides)
    return TurnRequested(**fields)  # type: ignore[arg-type]


def _handler(tenants: TenantDirectory, **parts: Any) -> tuple[PolicyHandler, Recorder]:
    fanout = Recorder()
    handler = PolicyHandler(
        topics=Topics.for_namespace("t"),
        fanout=fanout,
        require_auth=True,  # type: ignore[arg-type]
        authorizer=parts.get("fga", Fga()),
        engine=parts.get("opa", Opa()),
        budgets=parts.get("ledger", Ledger()),
        tenants=tenants,
        admissions=parts.get("admissions", Admissions()),
    )
    return handler, fanout


async def test_an_allowed_turn_reserves_its_estimate(tenants: TenantDirectory) -> None:
    opa = Opa()
    handler, fanout = _handler(tenants, opa=opa)
    [out] = await handler.handle(_turn())
    assert isinstance(out.event, TurnAuthorized) and out.event.reserved_tokens == 13  # 8/4+1+10
    assert fanout.events == [("turn.accepted", {"principal": "key:abc", "reserved_tokens": 13})]
    assert opa.inputs[0]["limits"]["tokens_per_day"] == 100
    assert opa.inputs[0]["request"]["estimated_tokens"] == 13


@pytest.mark.parametrize(
    ("parts", "code"),
    [
        ({"fga": Fga(allowed=False)}, "forbidden"),
        ({"fga": Fga(down=True)}, "authz_unavailable"),
        ({"opa": Opa(down=True)}, "policy_unavailable"),
        ({"opa": Opa(Decision(False, "model_not_allowed", "no"))}, "model_not_allowed"),
        ({"ledger": Ledger(grant=False)}, "budget_exhausted"),
    ],
)
async def test_denials_are_the_first_event_and_nothing_flows_on(
    tenants: TenantDirectory, parts: dict[str, Any], code: str
) -> None:
    handler, fanout = _handler(tenants, **parts)
    assert await handler.handle(_turn()) == []
    [(kind, error)] = fanout.events
    assert kind == "error" and error.code == code and error.message


async def test_no_principal_is_denied_and_fail_open_tenants_run_without_opa(
    tenants: TenantDirectory,
) -> None:
    handler, fanout = _handler(tenants, opa=Opa(down=True))
    assert await handler.handle(_turn(principal=None)) == []
    assert fanout.events[-1][1].code == "unauthenticated"
    [out] = await handler.handle(_turn(tenant="open"))
    assert out.event.reserved_tokens == 0  # type: ignore[union-attr]  # unlimited budget


async def test_a_second_record_of_an_admitted_turn_is_dropped(tenants: TenantDirectory) -> None:
    handler, _ = _handler(tenants)
    event = TurnRequested("e-dup", "s1", "hi", 0, tenant="default", principal="key:k1")
    set_delivery(Delivery("t.turn.requested", 0, 7, []))
    assert len(await handler.handle(event)) == 1
    assert len(await handler.handle(event)) == 1, "a redelivery of the same record runs"
    set_delivery(Delivery("t.turn.requested", 0, 9, []))
    assert await handler.handle(event) == [], "another record of the same turn is dropped"
