"""Token estimates: what a turn may cost before the model says what it did cost."""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (about 4 characters a token for English)."""
    return len(text) // 4 + 1


def turn_estimate(message: str, max_output_tokens: int) -> int:
    """What a turn may cost: its message plus the most its answer may use."""
    return estimate_tokens(message) + max_output_tokens
