"""`python -m tests.e2e.exactly_once_stage HANDLED_FILE`: a stage worker for
tests/e2e/test_exactly_once.py, run by `gateway_runtime.worker.serve_stage` like every
stage (transactional producer, read_committed consumer, the stage loop), with a handler
that stands for any stage's logic: a turn in the requests topic, after HANDLE_S, becomes
an authorized turn. It runs as the policy stage (its group, topics and transactional id
prefix, under the policy worker's principal). Each handled turn's event id is appended
to HANDLED_FILE before its output is committed: a turn listed twice was handled, then
its process was killed before the transaction carrying its output committed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from gateway_runtime.ports import Output
from gateway_runtime.settings import StageSettings
from gateway_runtime.worker import run_worker, serve_stage
from schemas.events import Event, TurnAuthorized, TurnRequested
from schemas.topics import Topics

HANDLE_S = 0.03


class Forward:
    stage = "policy"

    def __init__(self, topics: Topics, handled: Path) -> None:
        self.input_topic = topics.requested.name
        self._output = topics.authorized.name
        self._handled = open(handled, "a", buffering=1)  # for the life of the process

    async def handle(self, event: Event) -> list[Output]:
        assert isinstance(event, TurnRequested)
        await asyncio.sleep(HANDLE_S)
        self._handled.write(event.event_id + "\n")
        return [Output(self._output, TurnAuthorized(event, "eos", int(time.time() * 1000)))]


def main() -> None:
    os.environ["SERVICE_NAME"] = "policy_worker"
    settings = StageSettings()
    handler = Forward(Topics.for_namespace(settings.kafka_namespace), Path(sys.argv[1]))

    async def serve(stop: asyncio.Event) -> None:
        await serve_stage(handler, settings, stop)

    run_worker(settings, serve)


if __name__ == "__main__":
    main()
