"""The REST calls the CLI makes (`/v1/requeue`), failing with messages an operator can act on.

`Fatal` means nothing more can be done with these settings (gateway unreachable, key
missing or too weak); `ApiError` is one call's refusal (404, 409) and the caller decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from soma_cli.filters import Filters

TIMEOUT_S = 30.0
PAGE_MAX = 500  # the API's largest page
DeadLetter = dict[str, Any]


class Fatal(Exception):
    """The gateway cannot be used as configured: stop, and say how to fix it."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _detail(response: httpx.Response) -> tuple[str, str]:
    """The project's `{"detail": {"code", "message"}}`, or what else came (a proxy's page)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return f"http_{response.status_code}", response.text[:200] or response.reason_phrase
    if isinstance(detail, dict):
        return str(detail.get("code", f"http_{response.status_code}")), str(
            detail.get("message", "")
        )
    return f"http_{response.status_code}", str(detail)[:200]


class RequeueClient:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "soma-gateway-cli"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)

    def __enter__(self) -> RequeueClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.close()

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = self._http.request(method, path, params=params)
        except httpx.ConnectError as exc:
            raise Fatal(
                f"cannot reach the gateway at {self.url} ({exc}); is it running (make up)? "
                "Point at another one with --url or SOMA_GATEWAY_URL"
            ) from exc
        except httpx.TimeoutException as exc:
            raise Fatal(f"the gateway at {self.url} did not answer within {TIMEOUT_S:g}s") from exc
        except httpx.HTTPError as exc:
            raise Fatal(f"talking to the gateway at {self.url} failed: {exc}") from exc
        if response.is_success:
            return response.json()
        code, message = _detail(response)
        if response.status_code == 401:
            raise Fatal(
                f"401 {code}: {message}\n"
                "  the gateway wants an API key: --key, SOMA_API_KEY, or $SOMA_HOME/admin-key "
                "(make up writes the bootstrap operator key there)"
            )
        if response.status_code == 403:
            raise Fatal(
                f"403 {code}: {message}\n"
                "  dead letters need an operator key (every tenant) or a tenant admin key "
                "(its own tenant)"
            )
        raise ApiError(response.status_code, code, message)

    def page(
        self, filters: Filters, limit: int, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        params = {**filters.params(), "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        try:
            body = self._call("GET", "/v1/requeue", params)
        except ApiError as exc:
            if exc.status == 404:  # the route itself: an older gateway, or not one at all
                message = f"{self.url} has no dead-letter API (/v1/requeue answered 404)"
                raise Fatal(message) from exc
            raise
        return list(body["items"]), body.get("next_cursor")

    def matching(self, filters: Filters, limit: int | None = None) -> Iterator[DeadLetter]:
        """Every dead letter that matches (at most `limit`), following `next_cursor`."""
        cursor: str | None = None
        seen_cursors: set[str] = set()
        left = limit
        while left is None or left > 0:
            items, cursor = self.page(filters, min(PAGE_MAX, left or PAGE_MAX), cursor)
            yield from items[:left]
            if left is not None:
                left -= len(items)
            if not cursor or not items or cursor in seen_cursors:
                return
            seen_cursors.add(cursor)

    def get(self, dead_letter_id: str) -> DeadLetter:
        return dict(self._call("GET", f"/v1/requeue/{quote(dead_letter_id, safe='')}"))

    def replay(self, dead_letter_id: str) -> DeadLetter:
        path = f"/v1/requeue/{quote(dead_letter_id, safe='')}/resolve"
        return dict(self._call("POST", path))

    def discard(self, dead_letter_id: str) -> DeadLetter:
        return dict(self._call("DELETE", f"/v1/requeue/{quote(dead_letter_id, safe='')}"))
