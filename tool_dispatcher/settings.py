from __future__ import annotations

from gateway_runtime.settings import StageSettings


class ToolSettings(StageSettings):
    service_name: str = "tool_dispatcher"
    # The most of one tool result the model is shown (the rest is cut with a note).
    tool_result_max_chars: int = 4000
