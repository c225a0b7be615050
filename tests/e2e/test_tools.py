"""A turn with a tool round end to end: llm → tool_dispatcher → llm, on the real stack."""

from __future__ import annotations

import httpx
import pytest

from testbed.mesh import Mesh
from testbed.sandbox import Sandbox
from tests.turns import logged_events, profile, stored_messages, turn, wait_stored


@pytest.fixture
async def tools_stage(mesh: Mesh) -> None:
    await mesh.wait_group_members("tools")


async def upstream_calls(fake_llm: str, model: str) -> int:
    async with httpx.AsyncClient() as fake:
        return int((await fake.get(fake_llm + "/admin/stats")).json()["by_model"].get(model, 0))


@pytest.mark.usefixtures("tools_stage")
async def test_a_tool_call_streams_runs_and_feeds_the_answer_which_is_stored_once(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str, sandbox: Sandbox
) -> None:
    await profile(client, mesh, "calc", "openai/fake:tool", fake_llm)
    calls_before = await upstream_calls(fake_llm, "fake:tool")

    events = await turn(client, "calc", message="what is 6*7?")

    types = [e.type for e in events]
    assert types[-1] == "assistant.final", events[-1]
    assert types.index("tool.call") < types.index("tool.result") < types.index("assistant.final")
    call = events[types.index("tool.call")].data["data"]
    assert call["round"] == 0
    assert [(c["name"], c["arguments"]) for c in call["calls"]] == [
        ("calculator", '{"expression": "6*7"}')
    ]
    result = events[types.index("tool.result")].data["data"]
    assert (result["name"], result["ok"], result["content"]) == ("calculator", True, "42")
    assert result["id"] == call["calls"][0]["id"]
    final = events[-1].data["data"]
    assert "42" in final["text"]
    assert final["model"] == "openai/fake:tool"
    # Both model calls count: the budget settles on the whole turn.
    assert final["usage"]["prompt_tokens"] == 20
    assert await upstream_calls(fake_llm, "fake:tool") == calls_before + 2

    turn_id = events[-1].turn_id
    assert await wait_stored(sandbox.postgres_dsn, turn_id) == (1, 2)
    assert await stored_messages(sandbox.postgres_dsn, turn_id=turn_id) == [
        ("user", "what is 6*7?"),
        ("assistant", final["text"]),
    ]
    logged = [e["type"] for e in await logged_events(sandbox, events[-1].data["session_id"])]
    assert [logged.count(t) for t in ("tool.call", "tool.result", "assistant.final")] == [1, 1, 1]
