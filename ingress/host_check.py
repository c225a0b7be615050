"""Refuses requests whose `Host` is not one the ingress serves: the DNS-rebinding guard;
with auth off, also requests a web page of another origin makes the browser send.

A web page on `evil.example` can make its own name resolve to 127.0.0.1; the browser then
sends the page's requests to the loopback ingress with `Host: evil.example`, and reads
the answers as same-origin. Checking `Host` against the names the ingress is reached by
stops that: with auth off (GATEWAY_REQUIRE_AUTH=false) only the loopback names are
accepted by default (GATEWAY_ALLOWED_HOSTS, any port). Others get 421 with a JSON body
(`host_not_allowed`); a WebSocket handshake is closed (the server answers it 403).

The same page may also address http://127.0.0.1 directly: `Host` is then fine, but the
browser says whose page it is in `Origin`. It cannot read the answers (no CORS headers
here), but it can still act: post a form, or open a WebSocket, which CORS does not
cover and which would start turns and read a session as `anonymous`. So with auth off
(`check_origin`), a WebSocket handshake (403) and any request but GET, HEAD and OPTIONS
(403 `origin_not_allowed`) whose `Origin` names another host are refused. A request
without `Origin` (curl, the SDKs, the CLI: not a browser) is not. With auth on a
request needs credentials a foreign page does not have, and a browser app of another
origin may be a legitimate client, so `Origin` is not checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ingress.json_errors import send_json_error

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(value: str) -> str:
    """`Host` without its port, lower case: `[::1]:8010` -> `[::1]`, `Example:80` -> `example`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    return value.partition(":")[0]


def origin_host(origin: str) -> str:
    """The host an `Origin` names, as `host_name` spells it: `http://[::1]:8010` -> `[::1]`;
    "" for `null` (a sandboxed page, a file) or anything that is no origin."""
    try:
        netloc = urlsplit(origin.strip()).netloc
    except ValueError:
        return ""
    return host_name(netloc.rpartition("@")[2])


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, *, allowed: Iterable[str], check_origin: bool = False) -> None:
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)
        self.check_origin = check_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._host_allowed(scope):
            message = "this gateway does not answer for that Host (GATEWAY_ALLOWED_HOSTS)"
            await _refuse(scope, send, 421, "host_not_allowed", message)
            return
        if self.check_origin and not self._origin_allowed(scope):
            message = (
                "with auth off this gateway takes no requests but reads from a web page of"
                " another origin (GATEWAY_ALLOWED_HOSTS)"
            )
            await _refuse(scope, send, 403, "origin_not_allowed", message)
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, scope: Scope) -> bool:
        hosts = [v for k, v in scope.get("headers", ()) if k == b"host"]
        # No Host (HTTP/1.0) or two of them: nothing to trust.
        return len(hosts) == 1 and host_name(hosts[0].decode("latin-1")) in self.allowed

    def _origin_allowed(self, scope: Scope) -> bool:
        if scope["type"] == "http" and scope["method"] in SAFE_METHODS:
            return True
        origins = [v for k, v in scope.get("headers", ()) if k == b"origin"]
        return all(origin_host(o.decode("latin-1")) in self.allowed for o in origins)


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """A JSON error; a WebSocket handshake is closed instead (the server answers it 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        await send_json_error(scope, send, status, code, message)
