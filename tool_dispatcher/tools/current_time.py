"""`current_time`: the current time as ISO 8601, in UTC or an IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.tools import definition
from tool_dispatcher.registry import BuiltinTool, ToolError


def current_time(timezone: str | None = None, now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    if timezone:
        try:
            # ZoneInfo caches each zone, so its small file is read once per process.
            moment = moment.astimezone(ZoneInfo(timezone))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ToolError(f"unknown time zone {timezone!r}; use an IANA name") from exc
    return moment.isoformat(timespec="seconds")


def run(arguments: dict[str, Any]) -> str:
    return current_time(arguments.get("timezone"))


TOOL = BuiltinTool(definition("current_time"), run)
