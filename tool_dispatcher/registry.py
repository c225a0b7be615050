"""The tool registry: which tools exist, and calling one by name with the model's arguments.

A call never raises for the model's mistakes: an unknown tool, arguments that are not a
JSON object or break the tool's schema, or a tool refusing its input (`ToolError`) all
become a failed `ToolResult` whose text the model reads and can correct itself from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from schemas.tools import ToolDefinition


class ToolError(Exception):
    """The tool cannot do what the arguments ask; the message is for the model."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    ok: bool
    content: str


@dataclass(frozen=True, slots=True)
class BuiltinTool:
    """A tool run in the dispatcher's process: its contract and a function of its arguments."""

    definition: ToolDefinition
    run: Callable[[dict[str, Any]], str]

    @property
    def name(self) -> str:
        return self.definition.name


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def check_arguments(arguments: dict[str, Any], schema: dict[str, Any]) -> None:
    """The subset of JSON Schema tool definitions use: properties, types, required, lengths."""
    properties: dict[str, Any] = schema.get("properties") or {}
    missing = [name for name in schema.get("required") or () if name not in arguments]
    if missing:
        raise ToolError(f"missing required argument(s): {', '.join(missing)}")
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(arguments) - set(properties))
        if unknown:
            raise ToolError(f"unknown argument(s): {', '.join(unknown)}")
    for name, value in arguments.items():
        spec = properties.get(name) or {}
        expected = _JSON_TYPES.get(spec.get("type", ""))
        # bool is an int in Python but not a number in JSON Schema.
        if expected and (
            not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
        ):
            raise ToolError(f"argument {name!r} must be of type {spec['type']}")
        if isinstance(value, str) and len(value) > spec.get("maxLength", len(value)):
            raise ToolError(f"argument {name!r} is longer than {spec['maxLength']} characters")


class ToolRegistry:
    def __init__(self, tools: Iterable[BuiltinTool]) -> None:
        self._tools = {tool.name: tool for tool in tools}

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> BuiltinTool | None:
        return self._tools.get(name)

    def call(self, name: str, arguments_json: str, *, allowed: bool = True) -> ToolResult:
        """Run one call. `allowed=False` (the tenant's allow-list says no) reads like an
        unknown tool, so a tenant learns nothing of tools it may not use."""
        tool = self._tools.get(name) if allowed else None
        if tool is None:
            return ToolResult(False, f"error: no tool named {name!r} is available")
        try:
            # Models send "" for a call without arguments.
            arguments = json.loads(arguments_json) if arguments_json.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolResult(False, f"error: the arguments are not valid JSON ({exc.msg})")
        if not isinstance(arguments, dict):
            return ToolResult(False, "error: the arguments must be a JSON object")
        try:
            check_arguments(arguments, tool.definition.parameters)
            return ToolResult(True, tool.run(arguments))
        except ToolError as exc:
            return ToolResult(False, f"error: {exc}")
