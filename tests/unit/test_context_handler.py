from __future__ import annotations

from pathlib import Path

import pytest

from adapters.profiles import CachedProfiles
from adapters.tenants import TenantDirectory
from context_worker.handler import ContextHandler, fit_history
from gateway_runtime.errors import InvalidEvent
from gateway_runtime.ports import StoredProfile
from schemas.events import ChatMessage, ErrorInfo, TurnAuthorized, TurnCompleted, TurnRequested
from schemas.topics import Topics


class MemoryProfiles:
    """An in-memory twin of ProfileStore."""

    def __init__(self, *profiles: StoredProfile) -> None:
        self.rows = {(p.role, p.deployment_mode): p for p in profiles}

    async def get(self, role: str, mode: str) -> StoredProfile | None:
        return self.rows.get((role, mode))

    async def put(self, profile: StoredProfile, *, create_only: bool = False) -> bool:
        self.rows.setdefault((profile.role, profile.deployment_mode), profile)
        return True


class NoMemories:
    def __init__(self, memories: list[str] | None = None) -> None:
        self.memories = memories or []

    async def recall(self, tenant: str, principal: str, query: str, limit: int) -> list[str]:
        return self.memories[:limit]

    async def remember(self, *args: str) -> None:
        raise AssertionError("the context stage only recalls")


class RecordingFanout:
    """An in-memory twin of FanoutPublisher's error channel."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str, ErrorInfo]] = []

    async def publish_error(self, session_id: str, turn_id: str, error: ErrorInfo) -> None:
        self.errors.append((session_id, turn_id, error))


DEFAULT = StoredProfile("dialogue", "local", "m", max_tokens=100)


class MemoryTranscript:
    def __init__(self, messages: list[ChatMessage]) -> None:
        self.messages = messages

    async def recent(self, session_id: str, limit: int) -> list[ChatMessage]:
        return self.messages[-limit:]

    async def holds(self, turn_id: str) -> bool:
        return False


def _authorized(**overrides: object) -> TurnAuthorized:
    fields = dict(event_id="e", session_id="s", message="question", created_at_ms=1, tenant="acme")
    fields.update(overrides)
    return TurnAuthorized(TurnRequested(**fields), "alice", 1)  # type: ignore[arg-type]


@pytest.fixture
def tenants(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    system_prompt: Be terse.\n")
    return TenantDirectory(path)


def _handler(
    tenants: TenantDirectory,
    history: list[ChatMessage],
    profiles: MemoryProfiles | None = None,
    memories: list[str] | None = None,
    fanout: RecordingFanout | None = None,
) -> ContextHandler:
    return ContextHandler(
        topics=Topics.for_namespace("t"),
        transcript=MemoryTranscript(history),
        tenants=tenants,
        profiles=CachedProfiles(profiles or MemoryProfiles(), DEFAULT),  # type: ignore[arg-type]
        memory=NoMemories(memories),
        fanout=fanout or RecordingFanout(),  # type: ignore[arg-type]
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


async def test_profile_follows_model_role_with_fallbacks(tenants: TenantDirectory) -> None:
    profiles = MemoryProfiles(
        DEFAULT,
        StoredProfile("coder", "local", "big", fallbacks=["small", "missing"]),
        StoredProfile("small", "local", "tiny"),
    )
    [out] = await _handler(tenants, [], profiles).handle(
        _authorized(metadata={"model_role": "coder"})
    )
    assert out.event.profile.model == "big"  # type: ignore[union-attr]
    assert [p.model for p in out.event.fallbacks] == ["tiny"]  # type: ignore[union-attr]
    [out] = await _handler(tenants, [], profiles).handle(_authorized(metadata={"model_role": "x"}))
    assert out.event.profile.model == "m"  # type: ignore[union-attr]


async def test_recalled_memories_join_the_system_prompt(tenants: TenantDirectory) -> None:
    [out] = await _handler(tenants, [], memories=["User likes tea"]).handle(_authorized())
    assert "User likes tea" in out.event.messages[0].content  # type: ignore[union-attr]
    assert out.event.memories == ["User likes tea"]  # type: ignore[union-attr]


def test_the_default_profile_points_at_the_local_model() -> None:
    from gateway_runtime.settings import ContextSettings

    fields = ContextSettings.model_fields
    assert fields["default_model"].default == "openai/smollm2"
    assert fields["default_model_base_url"].default is None  # = LOCAL_LLM_BASE_URL
    assert fields["deployment_mode"].default == "local"


async def test_models_the_tenant_may_not_use_are_skipped_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    models_allow: ['tiny']\n")
    profiles = MemoryProfiles(
        DEFAULT,
        StoredProfile("coder", "local", "big", fallbacks=["small"]),
        StoredProfile("small", "local", "tiny"),
    )
    fanout = RecordingFanout()
    handler = _handler(TenantDirectory(path), [], profiles, fanout=fanout)
    [out] = await handler.handle(_authorized(metadata={"model_role": "coder"}))
    assert out.event.profile.model == "tiny"  # type: ignore[union-attr]
    assert out.event.fallbacks == []  # type: ignore[union-attr]

    [out] = await handler.handle(_authorized(metadata={"model_role": "dialogue"}))
    assert out.topic == "t.turn.completed"
    assert isinstance(out.event, TurnCompleted) and out.event.status == "failed"
    assert out.event.error is not None and out.event.error.code == "model_not_allowed"
    assert [e.code for _, _, e in fanout.errors] == ["model_not_allowed"]


async def test_an_openai_turn_sends_the_clients_messages_after_the_transcript(
    tenants: TenantDirectory,
) -> None:
    history = [ChatMessage("user", "earlier"), ChatMessage("assistant", "answer")]
    sent = [ChatMessage("developer", "Be a pirate."), ChatMessage("user", "hello")]
    turn = _authorized(api="chat.completions", messages=sent, message="hello")
    [output] = await _handler(tenants, history, memories=["never recalled"]).handle(turn)
    assert output.event.messages == [  # type: ignore[union-attr]
        ChatMessage("system", "Be a pirate."),  # the client's, not the tenant's
        *history,
        ChatMessage("user", "hello"),
    ]
    # Without a system message of its own the tenant's prompt leads.
    turn = _authorized(api="responses", messages=[ChatMessage("user", "hi")], message="hi")
    [output] = await _handler(tenants, []).handle(turn)
    assert output.event.messages[0] == ChatMessage("system", "Be terse.")  # type: ignore[union-attr]


async def test_openai_messages_that_cannot_fit_fail_the_turn(tenants: TenantDirectory) -> None:
    fanout = RecordingFanout()
    big = [ChatMessage("user", "word " * 2000)]
    turn = _authorized(api="chat.completions", messages=big, message="word")
    [output] = await _handler(tenants, [], fanout=fanout).handle(turn)
    assert isinstance(output.event, TurnCompleted) and output.event.status == "failed"
    assert [e.code for _, _, e in fanout.errors] == ["context_length_exceeded"]


class ArrivingTranscript(MemoryTranscript):
    """The persistence stage stores the previous turn on the third look."""

    def __init__(self, messages: list[ChatMessage]) -> None:
        super().__init__([])
        self.arriving = messages
        self.looks = 0

    async def holds(self, turn_id: str) -> bool:
        self.looks += 1
        if self.looks >= 3:
            self.messages = self.arriving
        return self.looks >= 3


async def test_a_continuing_turn_waits_for_the_previous_one_in_the_transcript(
    tenants: TenantDirectory,
) -> None:
    previous = [ChatMessage("user", "my name is Ada"), ChatMessage("assistant", "hello Ada")]
    transcript = ArrivingTranscript(previous)
    handler = _handler(tenants, [])
    handler.transcript = transcript
    turn = _authorized(
        api="responses", messages=[ChatMessage("user", "who am I?")], after_turn_id="t0"
    )
    [output] = await handler.handle(turn)
    assert transcript.looks == 3
    assert output.event.messages[1:3] == previous  # type: ignore[union-attr]
    # A turn that never arrives is waited for only `transcript_wait_s`.
    handler = _handler(tenants, [])
    handler.transcript_wait_s = 0.05
    [output] = await handler.handle(turn)
    assert output.event.messages[1:] == [ChatMessage("user", "who am I?")]  # type: ignore[union-attr]
