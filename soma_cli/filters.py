"""Which dead letters a command means: its filter flags as `/v1/requeue` query parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

DURATION = re.compile(r"(\d+)([smhdw])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
STATUSES = ("pending", "replayed", "discarded")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`10m`, `2h`, `1h30m`, `3d` (that long ago), or an ISO-8601 timestamp, read as UTC
    unless it carries an offset: an incident's times come from UTC logs."""
    text = text.strip()
    parts = DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        ago = timedelta(seconds=sum(int(n) * SECONDS[u] for n, u in parts))
        return (now or datetime.now(UTC)) - ago
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (10m, 2h, 1d) nor an ISO-8601 timestamp"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    stage: str | None = None
    error_type: str | None = None
    tenant: str | None = None
    session_id: str | None = None
    status: str | None = "pending"  # None: every status
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, str]:
        values = {
            "stage": self.stage,
            "error_type": self.error_type,
            "tenant": self.tenant,
            "session_id": self.session_id,
            "status": self.status,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }
        return {k: v for k, v in values.items() if v is not None}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params().items()) or "no filter"
