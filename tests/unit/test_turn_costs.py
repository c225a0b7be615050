"""What a turn may spend, and who pays: declared personas, unknown tenants, the reservation
the policy stage makes, the prompt the context stage builds within it, and the LLM
stage's calls kept within what is left (the mesh-level test: tests/security/
test_budget_dodging.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.profiles import PROVIDER_KWARGS, CachedProfiles
from adapters.tenants import TenantDirectory
from context_worker.handler import ContextHandler
from context_worker.prompts import ACTION_PROMPTS
from gateway_runtime.ports import Chunk, Tenant, ToolSpecs
from gateway_runtime.tokens import (
    ACTION_PROMPT_TOKENS,
    MIN_ANSWER_TOKENS,
    TurnCosts,
    estimate_json,
    estimate_messages,
    estimate_tokens,
)
from llm_worker.allowance import plan_call
from llm_worker.tool_requests import ToolOffer
from schemas.events import (
    ChatMessage,
    ModelProfile,
    ToolRequested,
    TurnAuthorized,
    TurnCompleted,
    TurnContextualized,
    TurnRequested,
    Usage,
)
from schemas.tools import load_definitions
from schemas.topics import Topics
from tests.unit.test_context_handler import (
    DEFAULT,
    MemoryProfiles,
    MemoryTranscript,
    NoMemories,
    RecordingFanout,
)
from tests.unit.test_policy_handler import Directory, _handler, _turn
from tests.unit.test_tools_handler import (
    MemoryFanout,
    ScriptedModel,
    _dispatcher,
    _llm,
)
from tests.unit.test_tools_handler import _turn as _tools_turn

CONF = """
tenants:
  default: {}
  acme:
    tokens_per_day: 1000
    max_output_tokens: 50
    max_context_tokens: 100
    tools_allow: ["calculator"]
    personas:
      analyst: {tokens_per_day: 5000}
      support: {}
  listed:
    personas: [a, b]
"""


@pytest.fixture
def directory(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(CONF)
    return TenantDirectory(path)


def test_a_persona_the_tenant_does_not_declare_spends_the_shared_budget(
    directory: TenantDirectory,
) -> None:
    acme = directory.get("acme")
    assert acme.personas == {"analyst", "support"}
    assert [acme.budget_persona(p) for p in (None, "analyst", "support", "made-up")] == [
        "default",
        "analyst",
        "support",
        "default",
    ]
    assert acme.budget_for("analyst") == 5000
    assert acme.budget_for("support") == acme.budget_for("default") == 1000
    assert directory.get("listed").personas == {"a", "b"}


def test_find_names_configured_tenants_only(directory: TenantDirectory) -> None:
    assert directory.find("acme") is directory.get("acme")
    assert directory.find("nobody") is None
    assert directory.get("nobody").name == "nobody"  # later stages: default's limits


def test_an_output_cap_of_zero_is_refused_and_the_last_good_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(CONF)
    directory = TenantDirectory(path)
    path.write_text("tenants:\n  acme:\n    max_output_tokens: 0\n")
    os.utime(path, (1, 1))
    assert directory.get("acme").max_output_tokens == 50


def test_the_reservation_covers_every_call_a_tool_turn_may_make(
    directory: TenantDirectory,
) -> None:
    costs = TurnCosts(load_definitions(), context_window_tokens=2048, max_tool_rounds=4)
    acme = directory.get("acme")
    ceiling = costs.ceiling(acme, "x" * 40, None)
    tools = estimate_json([load_definitions()["calculator"].openai()])
    fixed = estimate_tokens(acme.system_prompt) + estimate_tokens("x" * 40) + 8
    assert ceiling.calls == 5  # the first call and 4 tool rounds
    assert ceiling.prompt_tokens == fixed + 100 + tools  # max_context_tokens bounds context
    assert ceiling.tokens == 5 * (ceiling.prompt_tokens + 50)
    # Without tools one call; without max_context_tokens the window bounds the prompt.
    plain = costs.ceiling(Tenant("p", max_output_tokens=48), "hi", None)
    assert (plain.calls, plain.prompt_tokens + plain.output_tokens) == (1, 2048)
    assert all(estimate_tokens(p) <= ACTION_PROMPT_TOKENS for p in ACTION_PROMPTS.values())


async def test_the_context_stage_builds_the_prompt_the_policy_stage_reserved_for(
    directory: TenantDirectory,
) -> None:
    acme = directory.get("acme")
    costs = TurnCosts({}, context_window_tokens=2048, max_tool_rounds=4)
    history = [ChatMessage("user", f"earlier message {i} " * 20) for i in range(30)]
    memories = ["remembered " * 30, "also " * 50, "more " * 80]
    handler = ContextHandler(
        topics=Topics.for_namespace("t"),
        transcript=MemoryTranscript(history),
        tenants=directory,
        profiles=CachedProfiles(MemoryProfiles(), DEFAULT),  # type: ignore[arg-type]
        memory=NoMemories(memories),
        fanout=RecordingFanout(),  # type: ignore[arg-type]
        context_window_tokens=2048,
    )
    for action, message in ((None, "what now?"), ("summarize", "")):
        request = TurnRequested("e", "s", message, 1, tenant="acme", action=action)
        [out] = await handler.handle(TurnAuthorized(request, "p", 1, 500, max_output_tokens=50))
        assert isinstance(out.event, TurnContextualized)
        prompt = estimate_messages(out.event.messages)
        assert prompt <= costs.ceiling(acme, message, action).prompt_tokens
        assert out.event.profile.max_tokens == 50  # DEFAULT asks for 100: capped
        assert len(out.event.messages) > 2 or out.event.memories  # some context still fits


def _contextualized(
    reserved: int, prior: Usage | None, profile_max: int = 50
) -> TurnContextualized:
    request = TurnRequested("e", "s", "question", 1, tenant="acme")
    return TurnContextualized(
        request=request,
        principal="p",
        messages=[ChatMessage("system", "s" * 40), ChatMessage("user", "u" * 40)],
        profile=ModelProfile("openai/fake", max_tokens=profile_max),
        reserved_tokens=reserved,
        fallbacks=[ModelProfile("openai/other", max_tokens=500)],
        prior_usage=prior,
    )


def test_each_call_asks_for_at_most_what_the_reservation_leaves() -> None:
    tools = [load_definitions()["calculator"].openai()]
    prompt = 2 * (11 + 4)  # two 40-character messages
    with_tools = prompt + estimate_json(tools)
    # Plenty left: the profiles' own caps, and the tools.
    call = plan_call(_contextualized(1000, None), tools)
    assert call is not None and call.tools == tools
    assert [p.max_tokens for p in call.profiles] == [50, 500]
    # Not enough for another round after this one: no tools, the model must answer.
    call = plan_call(_contextualized(with_tools + 60, None), tools)
    assert call is not None and call.tools == []
    assert [p.max_tokens for p in call.profiles] == [50, with_tools + 60 - prompt]
    # Earlier rounds spent it: the call is not made.
    spent = Usage(1000 - prompt - MIN_ANSWER_TOKENS + 1, 0)
    assert plan_call(_contextualized(1000, spent), []) is None
    # No reservation (no budget): only the output cap the profiles carry.
    call = plan_call(_contextualized(0, Usage(10**6, 0)), tools)
    assert call is not None and [p.max_tokens for p in call.profiles] == [50, 500]


def test_profile_kwargs_cannot_lift_the_output_cap() -> None:
    assert not {"max_tokens", "max_completion_tokens", "max_output_tokens"} & PROVIDER_KWARGS


async def test_the_policy_stage_denies_a_tenant_missing_from_the_file(
    directory: TenantDirectory,
) -> None:
    handler, fanout = _handler(directory, principals=Directory(tenants={"key:gone": "gone"}))
    assert await handler.handle(_turn(tenant="gone", principal="key:gone")) == []
    [(kind, error)] = fanout.events
    assert (kind, error.code) == ("error", "unknown_tenant")


class CappedModel(ScriptedModel):
    """The scripted tool-calling model, recording what each call asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.max_tokens: list[int] = []

    async def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        self.max_tokens.append(profile.max_tokens)
        async for chunk in super().stream(profile, messages, tools):
            yield chunk


async def test_the_llm_stage_keeps_every_round_within_the_reservation(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  default: {tools_allow: ['*']}\n")
    tenants = TenantDirectory(path)
    fanout, model = MemoryFanout(), CappedModel()
    llm, tools = _llm(tenants, model, fanout), _dispatcher(tenants, fanout)
    # Room for the tool round, then the answer: the model asked for no more than is left.
    [asked] = await llm.handle(_tools_turn(reserved_tokens=1000))
    assert isinstance(asked.event, ToolRequested)
    [back] = await tools.handle(asked.event)
    assert isinstance(back.event, TurnContextualized)
    [done] = await llm.handle(back.event)
    assert isinstance(done.event, TurnCompleted) and done.event.status == "completed"
    assert done.event.usage == Usage(30, 9)  # both rounds settle
    first_prompt = estimate_messages(_tools_turn().messages) + estimate_json(
        ToolOffer(load_definitions(), tenants, 4).for_turn(_tools_turn())
    )
    assert model.max_tokens[0] == 256  # the profile's: well within what is left
    assert model.max_tokens[1] <= 1000 - 15 - first_prompt
    # Earlier rounds spent the reservation: the model is not asked, the turn ends.
    spent = _tools_turn(reserved_tokens=200, prior_usage=Usage(150, 40), tool_rounds=1)
    [ended] = await _llm(tenants, model, fanout).handle(spent)
    assert isinstance(ended.event, TurnCompleted) and ended.event.status == "failed"
    assert ended.event.error is not None and ended.event.error.code == "turn_tokens_exhausted"
    assert ended.event.usage == Usage(150, 40)  # what the earlier rounds used still settles
    assert len(model.max_tokens) == 2
