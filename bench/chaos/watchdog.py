"""Starts again any process of the chaos mesh that died on its own, and says why it died.

A deployment runs its processes under a supervisor (deploy/services.sh) or Kubernetes,
which start a dead one again; the chaos mesh runs them directly (several replicas of a
worker, which the supervisor does not do), so this stands in for it. A death the run did
not cause is a finding: it is reported with the last error its process logged.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.faults import module_of
from testbed.mesh import Mesh


@dataclass(frozen=True)
class Death:
    at_s: float
    process: str
    exit_code: int | None
    last_error: str


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Unknown|Fenced)\b.*")


def last_error(log: Path, limit: int = 160) -> str:
    """Why a process died, from the tail of its log: the last exception its final
    traceback names (a cancellation aside), else the last ERROR line's message."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    found = ""
    for line in reversed(lines):
        if _EXCEPTION.match(line) and "CancelledError" not in line:
            found = line
            break
        if not found and ('"level": "ERROR"' in line or '"level": "CRITICAL"' in line):
            try:
                found = str(json.loads(line).get("msg", ""))
            except ValueError:
                found = line
    return " ".join(found.split())[:limit]


@dataclass
class Watchdog:
    mesh: Mesh
    now: Callable[[], float]
    deaths: list[Death] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        while not stop.is_set():
            for name, proc in list(self.mesh.processes.items()):
                if proc.poll() is None:
                    continue
                log = self.mesh.log_dir / f"{name}.log"
                self.deaths.append(Death(self.now(), name, proc.returncode, last_error(log)))
                self.mesh.start(name, module_of(name))
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except TimeoutError:
                pass
