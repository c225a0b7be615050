"""Prompts of the session actions (`POST /v1/session/action`)."""

from __future__ import annotations

ACTION_PROMPTS: dict[str, str] = {
    "summarize": "Summarize this conversation so far in a few sentences.",
    "next_steps": "List the concrete next steps that follow from this conversation.",
    "status_report": "Write a short status report: what was asked, what was answered, "
    "and what is still open.",
}
