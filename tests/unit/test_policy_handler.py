"""The policy stage's decisions with in-memory twins of OpenFGA, OPA and the ledger."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.session_claims import SessionOfAnotherTenant
from adapters.tenants import TenantDirectory
from gateway_runtime.delivery import REPLAY_OF, REPLAY_SOURCE, Delivery, set_delivery
from gateway_runtime.errors import AuthzUnavailable, InvalidEvent, PolicyUnavailable
from gateway_runtime.ports import (
    Automation,
    BudgetUsage,
    Decision,
    RateDecision,
    Reservation,
    StoredProfile,
)
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
    """OpenFGA's `can_write` answer on every session."""

    allowed: bool = True
    down: bool = False


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
    """Admits a turn's first record (by event_id), or a replay of the very record that was
    admitted, like the Postgres adapter."""

    seen: dict[str, Delivery] = field(default_factory=dict)

    async def admit(self, event_id: str, delivery: Delivery) -> bool:
        first = self.seen.setdefault(event_id, delivery)
        return first == delivery or delivery.replay_source == (
            first.topic,
            first.partition,
            first.offset,
        )


@dataclass
class Ledger:
    grant: bool = True

    async def usage(self, tenant: str, persona: str) -> BudgetUsage:
        return BudgetUsage(0, 0, 100)

    async def reserve(
        self, turn_id: str, tenant: str, persona: str, estimate: int, budget: int
    ) -> Reservation:
        return Reservation(self.grant, estimate if self.grant else 0, BudgetUsage(90, 5, 100))


@dataclass
class Directory:
    """Principals and their tenants, and automations by inbound topic."""

    tenants: dict[str, str] = field(
        default_factory=lambda: {"key:abc": "acme", "key:k1": "default", "key:other": "open"}
    )
    automations: dict[str, Automation] = field(default_factory=dict)

    async def tenant_of(self, principal: str) -> str | None:
        automation = next((a for a in self.automations.values() if a.principal == principal), None)
        if automation is not None:
            return automation.tenant if automation.active else None
        return self.tenants.get(principal)

    async def automation_of(self, topic: str) -> Automation | None:
        return self.automations.get(topic)


@dataclass
class Profiles:
    """The role's profile, then its fallbacks."""

    models: tuple[str, ...] = ("openai/smollm2",)

    async def resolve(self, role: str) -> tuple[StoredProfile, list[StoredProfile]]:
        primary, *fallbacks = (
            StoredProfile(role, "local", model, "http://m") for model in self.models
        )
        return primary, fallbacks


@dataclass
class Limits:
    """Admits `room` turns, then refuses."""

    room: int = 1000
    asked: list[str] = field(default_factory=list)

    async def admit(self, subject: str, tenant: Any, tokens: int) -> RateDecision:
        self.asked.append(subject)
        if len(self.asked) > self.room:
            return RateDecision(False, "rpm_per_key", self.room, 30.0)
        return RateDecision(True)


@dataclass
class Claims:
    """Sessions by tenant, claimed by their first turn."""

    owners: dict[str, str] = field(default_factory=dict)
    fga: Fga = field(default_factory=Fga)

    async def claim(
        self, subject: str, tenant_name: str, session_id: str, persona_id: str | None
    ) -> None:
        if self.owners.setdefault(session_id, tenant_name) != tenant_name:
            raise SessionOfAnotherTenant(session_id)

    async def can_write(self, subject: str, session_id: str) -> bool:
        if self.fga.down:
            raise AuthzUnavailable("openfga down")
        return self.fga.allowed


@pytest.fixture
def tenants(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n  acme:\n    tokens_per_day: 100\n    max_output_tokens: 10\n"
        "    max_context_tokens: 20\n"
        "  open:\n    fail_open: true\n"
        "  default: {}\n"
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
        engine=parts.get("opa", Opa()),
        budgets=parts.get("ledger", Ledger()),
        tenants=tenants,
        admissions=parts.get("admissions", Admissions()),
        principals=parts.get("principals", Directory()),
        claims=parts.get("claims", Claims(fga=parts.get("fga", Fga()))),
        rate_limits=parts.get("rate_limits", Limits()),
        profiles=parts.get("profiles", Profiles()),
    )
    return handler, fanout


async def test_an_allowed_turn_reserves_its_estimate(tenants: TenantDirectory) -> None:
    opa = Opa()
    handler, fanout = _handler(tenants, opa=opa)
    [out] = await handler.handle(_turn())
    # One call (acme may use no tool) of: the system prompt 10 + the message 3 + 2 messages'
    # overhead 8 + context 20 (max_context_tokens) in, and 10 (max_output_tokens) out.
    assert isinstance(out.event, TurnAuthorized) and out.event.reserved_tokens == 51
    assert out.event.max_output_tokens == 10
    assert fanout.events == [("turn.accepted", {"principal": "key:abc", "reserved_tokens": 51})]
    assert opa.inputs[0]["limits"]["tokens_per_day"] == 100
    assert opa.inputs[0]["request"]["estimated_tokens"] == 51


@pytest.mark.parametrize(
    ("parts", "code"),
    [
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
    assert fanout.events == [], "nobody to tell: the turn names no poster"
    [out] = await handler.handle(_turn(tenant="open", principal="key:other"))
    assert out.event.reserved_tokens == 0  # type: ignore[union-attr]  # unlimited budget


async def test_a_second_record_of_an_admitted_turn_is_dropped(tenants: TenantDirectory) -> None:
    handler, _ = _handler(tenants)
    event = TurnRequested("e-dup", "s1", "hi", 0, tenant="default", principal="key:k1")
    set_delivery(Delivery("t.turn.requested", 0, 7, []))
    assert len(await handler.handle(event)) == 1
    assert len(await handler.handle(event)) == 1, "a redelivery of the same record runs"
    set_delivery(Delivery("t.turn.requested", 0, 9, []))
    assert await handler.handle(event) == [], "another record of the same turn is dropped"


NIGHTLY = Automation("nightly", "acme", "t.inbound.nightly", dt.datetime.now(dt.UTC), None)


async def test_a_principal_of_another_tenant_or_revoked_is_denied_without_a_session_event(
    tenants: TenantDirectory,
) -> None:
    handler, fanout = _handler(tenants)
    assert await handler.handle(_turn(principal="key:other")) == [], "a key of tenant open"
    assert await handler.handle(_turn(event_id="e2", principal="key:gone")) == []
    assert fanout.events == [], "a poster who may not write the session is not told there"


async def test_forbidden_by_openfga_writes_nothing_into_the_session(
    tenants: TenantDirectory,
) -> None:
    handler, fanout = _handler(tenants, fga=Fga(allowed=False))
    assert await handler.handle(_turn()) == []
    assert fanout.events == []


async def test_an_inbound_turn_runs_as_the_automation_that_owns_the_topic(
    tenants: TenantDirectory,
) -> None:
    directory = Directory(automations={NIGHTLY.topic: NIGHTLY})
    claims = Claims()
    handler, _ = _handler(tenants, principals=directory, claims=claims)
    set_delivery(Delivery(NIGHTLY.topic, 0, 1, []))
    [out] = await handler.handle(_turn(principal=None))
    assert isinstance(out.event, TurnAuthorized)
    assert out.event.principal == "automation:nightly"
    assert out.event.request.principal == "automation:nightly"
    assert claims.owners == {"s1": "acme"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"principal": "key:abc"}, "forged principal"),
        ({"tenant": "open"}, "forged tenant"),
        ({"session_id": "theirs"}, "session of another tenant"),
    ],
)
async def test_a_forged_inbound_turn_is_refused(
    tenants: TenantDirectory, overrides: dict[str, Any], reason: str
) -> None:
    directory = Directory(automations={NIGHTLY.topic: NIGHTLY})
    handler, fanout = _handler(tenants, principals=directory, claims=Claims({"theirs": "open"}))
    set_delivery(Delivery(NIGHTLY.topic, 0, 2, []))
    with pytest.raises(InvalidEvent, match=reason):
        await handler.handle(_turn(**{"principal": None, **overrides}))
    assert fanout.events == []


async def test_an_inbound_topic_of_no_active_automation_is_refused(
    tenants: TenantDirectory,
) -> None:
    revoked = Automation(
        "old", "acme", "t.inbound.old", dt.datetime.now(dt.UTC), dt.datetime.now(dt.UTC)
    )
    directory = Directory(automations={revoked.topic: revoked})
    handler, _ = _handler(tenants, principals=directory)
    for topic, state in ((revoked.topic, "revoked"), ("t.inbound.unknown", "unknown")):
        set_delivery(Delivery(topic, 0, 3, []))
        with pytest.raises(InvalidEvent, match=state):
            await handler.handle(_turn(principal=None))


async def test_opa_decides_on_the_model_the_turn_will_run_on_not_the_clients_word(
    tenants: TenantDirectory, tmp_path: Path
) -> None:
    path = tmp_path / "deny.yaml"
    path.write_text("tenants:\n  acme:\n    models_deny: ['openai/big*']\n")
    opa = Opa()
    profiles = Profiles(("openai/big-1", "openai/small"))
    handler, _ = _handler(TenantDirectory(path), opa=opa, profiles=profiles)
    await handler.handle(_turn(metadata={"model": "openai/whatever"}))
    assert opa.inputs[0]["model"] == "openai/small", "the first model the tenant allows"
    handler, _ = _handler(TenantDirectory(path), opa=opa, profiles=Profiles(("openai/big-1",)))
    await handler.handle(_turn(event_id="e9"))
    assert opa.inputs[-1]["model"] == "openai/big-1", "none allowed: the role's own, refused"


async def test_an_inbound_turn_left_in_the_default_tenant_takes_the_automations(
    tenants: TenantDirectory,
) -> None:
    handler, _ = _handler(tenants, principals=Directory(automations={NIGHTLY.topic: NIGHTLY}))
    set_delivery(Delivery(NIGHTLY.topic, 0, 4, []))
    [out] = await handler.handle(_turn(principal=None, tenant="default"))
    assert isinstance(out.event, TurnAuthorized) and out.event.request.tenant == "acme"


async def test_an_automation_cannot_rerun_an_admitted_turn_with_replay_headers(
    tenants: TenantDirectory,
) -> None:
    handler, _ = _handler(tenants, principals=Directory(automations={NIGHTLY.topic: NIGHTLY}))
    event = _turn(principal=None)
    set_delivery(Delivery(NIGHTLY.topic, 0, 5, []))
    assert len(await handler.handle(event)) == 1
    forged_replay = [
        (REPLAY_OF, b"1"),
        (REPLAY_SOURCE, f"{NIGHTLY.topic}/0/5".encode()),
    ]
    set_delivery(Delivery(NIGHTLY.topic, 0, 6, forged_replay))
    assert await handler.handle(event) == [], "its replay headers are its own word"
    # The gateway's own replay of that record comes on the requests topic (mesh only),
    # and runs as the automation whose topic it names.
    set_delivery(Delivery("t.turn.requested", 3, 9, forged_replay))
    [out] = await handler.handle(event)
    assert isinstance(out.event, TurnAuthorized) and out.event.principal == NIGHTLY.principal


async def test_an_automations_turns_count_against_the_tenants_rate_limits(
    tenants: TenantDirectory,
) -> None:
    limits = Limits(room=1)
    directory = Directory(automations={NIGHTLY.topic: NIGHTLY})
    handler, fanout = _handler(tenants, principals=directory, rate_limits=limits)
    set_delivery(Delivery(NIGHTLY.topic, 0, 7, []))
    assert len(await handler.handle(_turn(event_id="r1", principal=None))) == 1
    set_delivery(Delivery(NIGHTLY.topic, 0, 8, []))
    assert await handler.handle(_turn(event_id="r2", principal=None)) == []
    assert fanout.events[-1][0] == "error" and fanout.events[-1][1].code == "rate_limited"
    set_delivery(Delivery("t.turn.requested", 0, 9, []))
    assert len(await handler.handle(_turn(event_id="r3"))) == 1, "the ingress counted it"
    assert limits.asked == [NIGHTLY.principal] * 2
