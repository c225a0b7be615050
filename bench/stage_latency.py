"""A stage's own handling time under load, from its `soma_stage_handle_seconds` histogram.

The load generator sees a turn end to end; this says how much of it one stage spent (the
policy stage's checks, say), read from the worker's /metrics before and after the window
and interpolated within buckets, as Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

_BUCKET = re.compile(
    r'^soma_stage_handle_seconds_bucket\{[^}]*le="([^"]+)"[^}]*stage="([^"]+)"[^}]*\}\s+(\S+)$'
    r'|^soma_stage_handle_seconds_bucket\{[^}]*stage="([^"]+)"[^}]*le="([^"]+)"[^}]*\}\s+(\S+)$'
)


def scrape(port: int, stage: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of `stage` at this moment."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if not match:
            continue
        le, name, count = match.group(1, 2, 3) if match.group(1) else match.group(5, 4, 6)
        if name == stage:
            buckets[float(le)] = float(count)
    return buckets


@dataclass(frozen=True)
class StageWindow:
    before: dict[float, float]
    after: dict[float, float]

    def quantile_ms(self, q: float) -> float | None:
        bounds = sorted(self.after)
        counts = [self.after[b] - self.before.get(b, 0.0) for b in bounds]
        total = counts[-1] if counts else 0.0
        if total <= 0:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for bound, cumulative in zip(bounds, counts, strict=True):
            if cumulative >= rank:
                if bound == float("inf"):
                    return lower * 1000
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                return (lower + (bound - lower) * share) * 1000
            lower, below = bound, cumulative
        return None

    def summary(self) -> dict[str, float | None]:
        bounds = sorted(self.after)
        n = self.after[bounds[-1]] - self.before.get(bounds[-1], 0.0) if bounds else 0.0
        return {"p50_ms": self.quantile_ms(0.5), "p99_ms": self.quantile_ms(0.99), "events": n}
