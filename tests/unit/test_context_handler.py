from __future__ import annotations

from pathlib import Path

import pytest

from context_worker.handler import ContextHandler, fit_history
from gateway_runtime.errors import InvalidEvent
from gateway_runtime.tenants import TenantDirectory
from schemas.events import ChatMessage, ModelProfile, TurnAuthorized, TurnRequested
from schemas.topics import Topics


class MemoryTranscript:
    def __init__(self, messages: list[ChatMessage]) -> None:
        self.messages = messages

    async def recent(self, session_id: str, limit: int) -> list[ChatMessage]:
        return self.messages[-limit:]


def _authorized(**overrides: object) -> TurnAuthorized:
    fields = dict(event_id="e", session_id="s", message="question", created_at_ms=1, tenant="acme")
    fields.update(overrides)
    return TurnAuthorized(TurnRequested(**fields), "alice", 1)  # type: ignore[arg-type]


@pytest.fixture
def tenants(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    system_prompt: Be terse.\n")
    return TenantDirectory(path)


def _handler(tenants: TenantDirectory, history: list[ChatMessage]) -> ContextHandler:
    return ContextHandler(
        topics=Topics.for_namespace("t"),
        transcript=MemoryTranscript(history),
        tenants=tenants,
        default_profile=ModelProfile(model="m", max_tokens=100),
        context_window_tokens=400,
    )


async def test_messages_are_system_history_then_user(tenants: TenantDirectory) -> None:
    history = [ChatMessage("user", "earlier"), ChatMessage("assistant", "answer")]
    [output] = await _handler(tenants, history).handle(_authorized())
    assert output.topic == "t.turn.contextualized"
    assert output.event.messages == [  # type: ignore[union-attr]
        ChatMessage("system", "Be terse."),
        *history,
        ChatMessage("user", "question"),
    ]


async def test_history_is_trimmed_to_the_context_window(tenants: TenantDirectory) -> None:
    history = [ChatMessage("user", "x" * 400) for _ in range(10)]
    [output] = await _handler(tenants, history).handle(_authorized())
    kept = output.event.messages[1:-1]  # type: ignore[union-attr]
    assert 0 < len(kept) < 10
    assert fit_history(history, 0) == []


async def test_actions_use_their_prompt_and_unknown_actions_are_invalid(
    tenants: TenantDirectory,
) -> None:
    [output] = await _handler(tenants, []).handle(_authorized(action="summarize", message=""))
    assert "Summarize" in output.event.messages[-1].content  # type: ignore[union-attr]
    with pytest.raises(InvalidEvent):
        await _handler(tenants, []).handle(_authorized(action="dance"))


async def test_tenant_file_edits_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    system_prompt: One.\n")
    directory = TenantDirectory(path)
    assert directory.get("acme").system_prompt == "One."
    path.write_text("tenants:\n  acme:\n    system_prompt: Two.\n")
    import os

    os.utime(path, (1, 1))
    assert directory.get("acme").system_prompt == "Two."
