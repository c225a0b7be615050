"""Persistence stage: stores sessions, transcript and usage, idempotently."""
