"""Schemathesis hooks for test_fuzz.py.

- no response may carry a stack trace or a library's exception name;
- the fuzzer never revokes the key it runs with (`FUZZ_OWN_KEY_ID`): schemathesis reuses
  values it saw in responses, ids from `GET /v1/keys` among them, so it would otherwise
  lock itself out halfway and fuzz nothing but 401s.
"""

from __future__ import annotations

import os
import re

import schemathesis

TRACE = re.compile(
    rb"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+|"
    rb"\b(?:asyncpg|aiokafka|redis|openfga_sdk)\.[a-z_.]*(?:Error|Exception)\b"
)
OWN_KEY_ID = os.environ.get("FUZZ_OWN_KEY_ID", "")


@schemathesis.check
def no_stack_trace(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    match = TRACE.search(response.content or b"")
    if match is not None:
        raise AssertionError(f"the response body leaks internals: {match.group(0)!r}")


@schemathesis.hook
def before_call(ctx, case, kwargs) -> None:  # type: ignore[no-untyped-def]
    if case.method.upper() == "DELETE" and (case.path_parameters or {}).get("key_id") == OWN_KEY_ID:
        case.path_parameters["key_id"] = "0" * 16  # no such key: a 404, as any unknown one
    if case.path.endswith("/events"):
        # An event stream never ends by itself: what is checked is its status and headers.
        kwargs["timeout"] = 0.5
