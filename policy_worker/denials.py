"""A turn the policy stage refuses, and whether its session may hear of it."""

from __future__ import annotations

from schemas.events import ErrorInfo


class Denied(Exception):
    def __init__(self, error: ErrorInfo, *, tell_session: bool = True) -> None:
        super().__init__(error.code)
        self.error = error
        self.tell_session = tell_session  # False: the poster may not write the session


def deny(
    code: str, message: str, retry_after_s: float | None = None, *, tell_session: bool = True
) -> Denied:
    retryable = retry_after_s is not None and retry_after_s > 0
    error = ErrorInfo(code, message, retryable, retry_after_s if retryable else None)
    return Denied(error, tell_session=tell_session)
