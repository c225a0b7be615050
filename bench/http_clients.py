"""CPU per call of the two HTTP clients the turn's path could use: httpx and aiohttp.

`PYTHONPATH=. python -m bench.http_clients [--calls N] [--concurrency C]` starts the fake
upstream (bench/fake_upstream.py) and measures, in this process, the CPU (user + system)
per call of:
- a streamed chat completion read line by line to `[DONE]`, as the LLM stage reads one
  (20 tokens 5 ms apart, no wait for the first): httpx over the stage's old guarded
  transport (llm_worker/guarded_http.py `guarded_client`, LiteLLM's today) against the
  lean adapter itself (llm_worker/openai_http.py over `guarded_session`);
- a small JSON request and answer, as the policy stage asks OPA: httpx against aiohttp.
Both clients keep their connections; each runs a warm-up first. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import uvloop

from gateway_runtime.egress import EgressPolicy
from llm_worker.guarded_http import guarded_client, guarded_session
from llm_worker.openai_http import OpenAIHttpModel
from schemas.events import ChatMessage, ModelProfile
from testbed.mesh import start_fake_upstream

MODEL = "fake:ok:0:20:5"  # no wait for the first token; 20 tokens 5 ms apart
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def cpu_ms_per_call(
    call: Callable[[], Awaitable[int]], calls: int, concurrency: int
) -> float:
    """CPU ms per call of `calls` calls, `concurrency` at a time, after a warm-up."""
    for _ in range(20):
        await call()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return await call()

    started = _cpu_s()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (_cpu_s() - started) * 1000 / calls


async def run(base_url: str, calls: int, concurrency: int) -> dict[str, float]:
    policy = EgressPolicy([urlsplit(base_url).netloc])
    url = base_url + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: dict[str, float] = {}
    async with guarded_client(policy, timeout=httpx.Timeout(30), limits=limits) as client:

        async def httpx_stream() -> int:
            chunks = 0
            async with client.stream("POST", url, json=BODY) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:") and line[5:].strip() != "[DONE]":
                        json.loads(line[5:])
                        chunks += 1
            return chunks

        async def httpx_json() -> int:
            return len((await client.get(base_url + "/admin/stats")).json())

        results["stream, httpx (guarded)"] = await cpu_ms_per_call(httpx_stream, calls, concurrency)
        results["json, httpx"] = await cpu_ms_per_call(httpx_json, calls, concurrency)
    async with guarded_session(
        policy, read_timeout_s=30, connect_timeout_s=5, limit=concurrency
    ) as session:
        model = OpenAIHttpModel(session)
        profile = ModelProfile(f"openai/{MODEL}", base_url=base_url + "/v1")
        hello = [ChatMessage("user", "hi")]

        async def aiohttp_stream() -> int:
            return len([chunk async for chunk in model.stream(profile, hello)])

        async def aiohttp_json() -> int:
            async with session.get(base_url + "/admin/stats") as response:
                return len(await response.json())

        results["stream, aiohttp (the lean adapter)"] = await cpu_ms_per_call(
            aiohttp_stream, calls, concurrency
        )
        results["json, aiohttp"] = await cpu_ms_per_call(aiohttp_json, calls, concurrency)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    proc, base_url = start_fake_upstream()
    try:
        results = uvloop.run(run(base_url, args.calls, args.concurrency))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"CPU ms per call, {args.calls} calls, {args.concurrency} at a time:")
    for name, ms in results.items():
        print(f"  {name:40} {ms:6.2f}")


if __name__ == "__main__":
    main()
