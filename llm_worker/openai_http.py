"""A lean streaming client for OpenAI-compatible chat endpoints (aiohttp, one per process).

Measured beside LiteLLM because LiteLLM's per-call CPU (~16 ms a streamed call here) is
most of what stands between the LLM stage and the throughput target. aiohttp rather than
httpx: it reads a streamed answer for a third to a half of httpx's CPU (`python -m
bench.http_clients`: 0.8 against 2.6 ms a call 20 at a time, 2.5 against 4.8 one at a
time; docs/benchmarks.md).

The session it is given checks every connection against the egress policy
(llm_worker/guarded_http.py `guarded_session`); the Authorization header carries the
profile's own secret (llm_worker/credentials.py), or nothing. An upstream's error body
goes to the log, cut to `ERROR_BODY_LOGGED` bytes, and never into the error a client is
shown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from gateway_runtime.errors import ProviderError
from gateway_runtime.ports import Chunk, ToolSpecs
from llm_worker.credentials import Credentials
from llm_worker.wire import ToolCallAccumulator, provider_kwargs, wire_messages
from schemas.events import ChatMessage, ModelProfile, Usage

log = logging.getLogger(__name__)
ERROR_BODY_LOGGED = 1000


class OpenAIHttpModel:
    def __init__(
        self, client: aiohttp.ClientSession, credentials: Credentials | None = None
    ) -> None:
        self._client = client
        self._credentials = credentials

    async def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        if not profile.base_url:
            raise ProviderError(f"profile {profile.role}/{profile.deployment_mode} has no base_url")
        url = profile.base_url.rstrip("/") + (profile.api_path or "/chat/completions")
        body: dict[str, Any] = {
            "model": profile.model.split("/", 1)[-1],
            "messages": wire_messages(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": profile.temperature,
            "max_tokens": profile.max_tokens,
            **provider_kwargs(profile),
        }
        if tools:
            body["tools"] = list(tools)
        calls = ToolCallAccumulator()
        api_key = await self._credentials.api_key(profile) if self._credentials else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        finished = received = False
        try:
            async with self._client.post(
                url, json=body, headers=headers, allow_redirects=False
            ) as response:
                if response.status >= 400:
                    await _log_error_body(profile, response)
                    raise ProviderError(f"{url} answered {response.status}", status=response.status)
                # Read to the end of the body, past `[DONE]`: a response left unread
                # closes its connection, and the next call pays a new TCP+TLS handshake.
                done = False
                async for line in _lines(response.content):
                    if done or not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        finished = done = True
                        continue
                    chunk = _parse(data, calls)
                    if chunk.finish_reason:
                        finished = True
                    received = received or bool(chunk.text)
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"{url}: {exc!r}", mid_stream=received) from exc
        if not finished:
            raise ProviderError(f"{url}: stream ended without a finish reason", mid_stream=True)
        if whole := calls.calls():
            yield Chunk(tool_calls=whole)


async def _lines(body: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's lines, whatever their length (aiohttp's own line reader refuses lines
    longer than its buffer; a streamed tool call's arguments can be one long line)."""
    pending: list[bytes] = []  # the current line's pieces, no newline in any of them
    async for part in body.iter_any():
        if b"\n" not in part:
            pending.append(part)  # joined once, when the line ends: no copy per piece
            continue
        lines = b"".join((*pending, part)).split(b"\n")
        pending = [lines.pop()]
        for line in lines:
            yield line
    if rest := b"".join(pending):
        yield rest


async def _log_error_body(profile: ModelProfile, response: aiohttp.ClientResponse) -> None:
    body = b""
    async for part in response.content.iter_any():
        body += part
        if len(body) >= ERROR_BODY_LOGGED:
            break
    log.warning(
        "model %s/%s answered %s: %s",
        profile.role,
        profile.deployment_mode,
        response.status,
        body[:ERROR_BODY_LOGGED].decode("utf-8", "replace"),
    )


def _parse(data: bytes, calls: ToolCallAccumulator) -> Chunk:
    try:
        payload = json.loads(data)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ProviderError(f"malformed stream chunk: {data[:100]!r}", mid_stream=True) from exc
    usage = payload.get("usage")
    text, finish = "", None
    for choice in payload.get("choices") or ():
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        if delta.get("tool_calls"):
            calls.add_openai(delta["tool_calls"])
        finish = choice.get("finish_reason") or finish
    return Chunk(
        text=text,
        finish_reason=finish,
        usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        if usage
        else None,
    )
