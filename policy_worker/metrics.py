"""The policy stage's own metrics (the stage loop counts events and handle time)."""

from __future__ import annotations

from prometheus_client import Counter

DECISIONS = Counter(
    "soma_policy_decisions_total", "Turns the policy stage decided, by outcome", ["outcome"]
)
