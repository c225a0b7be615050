"""Schemathesis hooks for test_fuzz.py: responses must never carry a stack trace."""

from __future__ import annotations

import re

import schemathesis

TRACE = re.compile(
    rb"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+|"
    rb"\b(?:asyncpg|aiokafka|redis|openfga_sdk)\.[a-z_.]*(?:Error|Exception)\b"
)


@schemathesis.check
def no_stack_trace(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    match = TRACE.search(response.content or b"")
    if match is not None:
        raise AssertionError(f"the response body leaks internals: {match.group(0)!r}")
