"""A fake capsule registry on loopback, for the capsules proxy's tests (`/v1/capsules`).

A real HTTP server (Starlette under uvicorn) in a process of its own. What a capsule
answers comes from its id's prefix:
- `missing…`: 404 with a JSON body;
- `blob…`: a binary bundle of `BLOB_SIZE` bytes (`blob_bytes()`), streamed in chunks,
  with `Content-Disposition: attachment; filename="<id>.tar.gz"`;
- `drip…`: a binary body in `DRIP_CHUNKS` chunks `DRIP_GAP_S` apart (streaming evidence);
- `slow…`: headers only after `?delay=` seconds (default 30: beyond any test timeout);
- `stall…`: headers and a first chunk, then nothing for 30 s (a registry dying mid-body);
- anything else: the capsule as JSON.
Every request is recorded: `GET /_requests` lists method, path, query, headers and body.

    python -m testbed.fake_capsule_registry --port 18190
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from testbed.mesh import start_loopback_server

BLOB_SIZE = 300_000
CHUNK = 64 * 1024
DRIP_CHUNKS = 4
DRIP_GAP_S = 0.3
CAPSULES = [
    {"id": f"capsule-{i:02d}", "name": f"Capsule {i}", "version": "1.0.0"} for i in range(25)
]

received: deque[dict[str, Any]] = deque(maxlen=1000)


def blob_bytes(size: int = BLOB_SIZE) -> bytes:
    """The `blob…` capsules' bundle: deterministic, so a test can compare every byte."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def _record(request: Request) -> None:
    received.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": list(request.query_params.multi_items()),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": (await request.body()).decode(errors="replace"),
        }
    )


async def list_capsules(request: Request) -> Response:
    await _record(request)
    try:
        start = int(request.query_params.get("cursor") or 0)
        limit = int(request.query_params.get("limit") or 10)
    except ValueError:  # as a registry would: a bad page is the caller's error
        return JSONResponse({"error": "invalid_cursor_or_limit"}, status_code=400)
    page = CAPSULES[start : start + limit]
    more = start + limit < len(CAPSULES)
    return JSONResponse(
        {
            "items": page,
            "next_cursor": str(start + limit) if more else None,
            "tenant": request.headers.get("x-soma-tenant"),
        }
    )


async def _chunks(data: bytes, gap_s: float = 0.0) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]
        if gap_s:
            await asyncio.sleep(gap_s)


async def _stall() -> AsyncIterator[bytes]:
    yield b"x" * 1024
    await asyncio.sleep(30)
    yield b"never"


async def get_capsule(request: Request) -> Response:
    await _record(request)
    capsule_id: str = request.path_params["capsule_id"]
    if capsule_id.startswith("missing"):
        return JSONResponse({"error": "not_found", "id": capsule_id}, status_code=404)
    if capsule_id.startswith("slow"):
        await asyncio.sleep(float(request.query_params.get("delay") or 30))
    if capsule_id.startswith("blob"):
        headers = {
            "content-disposition": f'attachment; filename="{capsule_id}.tar.gz"',
            "content-length": str(BLOB_SIZE),
        }
        return StreamingResponse(
            _chunks(blob_bytes()), media_type="application/octet-stream", headers=headers
        )
    if capsule_id.startswith("drip"):
        data = blob_bytes(CHUNK * DRIP_CHUNKS)
        return StreamingResponse(_chunks(data, DRIP_GAP_S), media_type="application/octet-stream")
    if capsule_id.startswith("stall"):
        return StreamingResponse(_stall(), media_type="application/octet-stream")
    return JSONResponse({"id": capsule_id, "name": capsule_id.title(), "version": "1.0.0"})


async def install_capsule(request: Request) -> Response:
    await _record(request)
    capsule_id: str = request.path_params["capsule_id"]
    if capsule_id.startswith("missing"):
        return JSONResponse({"error": "not_found", "id": capsule_id}, status_code=404)
    body = await request.body()
    return JSONResponse(
        {
            "id": capsule_id,
            "installed_for": request.headers.get("x-soma-tenant"),
            "options": body.decode() or None,
        },
        status_code=202,
    )


async def requests_seen(request: Request) -> Response:
    return JSONResponse(list(received))


app = Starlette(
    routes=[
        Route("/capsules", list_capsules),
        Route("/capsules/{capsule_id}", get_capsule),
        Route("/capsules/{capsule_id}/install", install_capsule, methods=["POST"]),
        Route("/_requests", requests_seen),
    ]
)


def start_fake_capsule_registry(log_dir: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The fake registry on a free port: its process and base URL (ready to answer)."""
    return start_loopback_server("testbed.fake_capsule_registry", "/_requests", log_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake capsule registry on loopback.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Slow and stalled answers hold connections open: shutdown does not wait for them.
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1
    )


if __name__ == "__main__":
    main()
