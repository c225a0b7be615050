from __future__ import annotations

import json

from llm_worker.client_request import client_tools, with_generation
from llm_worker.wire import provider_kwargs
from schemas.events import ModelProfile, TurnRequested

PROFILE = ModelProfile(model="openai/m", temperature=0.7, max_tokens=100, kwargs_json='{"seed":1}')


def test_the_clients_parameters_go_on_the_profile_within_its_cap() -> None:
    profile = with_generation(
        PROFILE,
        {
            "temperature": 0,
            "max_tokens": 500,  # more than the profile's cap (the turn's reservation): kept 100
            "stop": ["\n\n"],
            "seed": 7,
            "tool_choice": "auto",
            "api_base": "http://evil.example",  # never a generation argument: dropped
        },
    )
    assert (profile.temperature, profile.max_tokens) == (0.0, 100)
    assert provider_kwargs(profile) == {"seed": 7, "stop": ["\n\n"], "tool_choice": "auto"}
    assert with_generation(PROFILE, {"max_tokens": 20}).max_tokens == 20
    assert with_generation(PROFILE, {}) is PROFILE


def test_client_tools_come_from_the_generation_parameters() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    request = TurnRequested(
        event_id="e",
        session_id="s",
        message="m",
        created_at_ms=1,
        api="chat.completions",
        generation_json=json.dumps({"tools": [tool, "junk"]}),
    )
    assert client_tools(request) == [tool] and request.client_tools
    plain = TurnRequested(event_id="e", session_id="s", message="m", created_at_ms=1)
    assert client_tools(plain) == [] and not plain.client_tools
