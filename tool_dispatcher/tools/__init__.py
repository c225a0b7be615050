"""The built-in tools, one module each; each binds its definition from `schemas/tools/`."""

from __future__ import annotations

from tool_dispatcher.registry import BuiltinTool
from tool_dispatcher.tools import calculator, current_time

BUILTIN_TOOLS: tuple[BuiltinTool, ...] = (calculator.TOOL, current_time.TOOL)
