"""Definitions of the tools a model may call: one JSON file per tool, `<name>.json`.

Each file is an OpenAI function definition (`name`, `description`, `parameters` as JSON
Schema). They live with the other public contracts rather than in `tool_dispatcher/`
because two processes read them: the LLM stage offers them to the model, the tool
dispatcher validates arguments against them and runs the tool of the same name. Neither
imports the other's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOLS_DIR = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        """The definition as the OpenAI `tools` parameter lists it."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


def load_definitions(directory: Path = TOOLS_DIR) -> dict[str, ToolDefinition]:
    """Every `<name>.json` under directory, by name."""
    found: dict[str, ToolDefinition] = {}
    for path in sorted(directory.glob("*.json")):
        raw = json.loads(path.read_text())
        definition = ToolDefinition(raw["name"], raw["description"], raw["parameters"])
        assert definition.name == path.stem, f"{path.name} defines {definition.name!r}"
        found[definition.name] = definition
    return found


def definition(name: str) -> ToolDefinition:
    """One tool's definition (the built-in tool modules bind theirs at import)."""
    return load_definitions()[name]
