"""Starting a turn answers within TURN_ACCEPT_DEADLINE_S, whatever a dependency does.

Every call under it has a deadline of its own (Kafka's publish timeout, the outbox
write, Postgres's and Redis's timeouts, OpenFGA's), but they add up: authentication,
the rate limiter, the session claim, the Idempotency-Key and the publish all run before
the answer. This middleware is the sum's bound: if no answer has started by the
deadline, the work is cancelled and the client gets 503 with Retry-After. The routes read
the deadline from the scope to share out what is left of it (ingress/outbox.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.json_errors import send_json_error

log = logging.getLogger(__name__)
ACCEPT_DEADLINE = "accept_deadline"  # scope["state"] key: the time.monotonic() answer is due
RETRY_AFTER_S = 2


class AcceptDeadline:
    def __init__(self, app: ASGIApp, *, paths: frozenset[str], deadline_s: float) -> None:
        self.app = app
        self.paths = paths
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[ACCEPT_DEADLINE] = time.monotonic() + self.deadline_s
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.deadline_s) as due:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if started or not due.expired():
                raise
            log.warning(
                "a turn request missed its deadline: 503",
                extra={"fields": {"path": scope["path"], "deadline_s": self.deadline_s}},
            )
            await send_json_error(
                scope,
                send,
                503,
                "accept_timeout",
                f"the turn could not be accepted within {self.deadline_s:g}s (Kafka, "
                "Postgres or authorization is not answering). It may still start if it "
                "reached Kafka: retry after Retry-After seconds with the same "
                "Idempotency-Key, which never starts a turn twice",
                retry_after_s=RETRY_AFTER_S,
            )
