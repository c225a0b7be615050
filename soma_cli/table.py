"""Dead letters as text: an aligned table for lists, `field: value` lines for one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

# (header, field, widest cell): ids are never cut, an operator copies them.
COLUMNS = (
    ("ID", "id", 40),
    ("STATUS", "status", 10),
    ("STAGE", "stage", 14),
    ("TENANT", "tenant", 16),
    ("SESSION", "session_id", 24),
    ("ERROR_TYPE", "error_type", 28),
    ("LAST_FAILED_AT", "last_failed_at", 20),
    ("REPLAYS", "replays", 7),
)
TIMESTAMPS = {"first_failed_at", "last_failed_at", "replayed_at", "discarded_at"}


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def cell(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field in TIMESTAMPS and isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo:
            moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%SZ")
    return " ".join(str(value).split())  # one line per row, whatever the value holds


def table(items: Iterable[Mapping[str, Any]]) -> str:
    rows = [
        [truncate(cell(field, item.get(field)), cap) for _, field, cap in COLUMNS] for item in items
    ]
    headers = [header for header, _, _ in COLUMNS]
    widths = [max(len(c) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def details(item: Mapping[str, Any]) -> str:
    """Every field of one dead letter, the error message whole."""
    width = max(len(k) for k in item)
    lines = []
    for key, value in item.items():
        text = (
            str(value).rstrip()
            if key == "error_message" and value is not None
            else cell(key, value)
        )
        lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)
