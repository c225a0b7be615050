"""What a benchmark charges and checks, shared by `bench.run` and `bench.peer`.

CPU per process tree over a window (/proc ticks: each process and its descendants, so
Postgres backends and a JVM's threads count), the backing services' pids, the check that
every accepted turn was stored, and the machine a report was taken on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from testbed.sandbox import ROOT, Sandbox

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, its own utime+stime ticks, its reaped children's cutime+cstime) for
    every process now alive."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        table[int(entry.name)] = (
            int(rest[1]),
            int(rest[11]) + int(rest[12]),
            int(rest[13]) + int(rest[14]),
        )
    return table


def _tree_ticks(root: int, table: dict[int, tuple[int, int, int]]) -> int | None:
    """CPU ticks of a process and its descendants (Postgres backends, JVM wrappers): the
    live ones, and those that ended and were reaped (their CPU moved into their parent's
    cutime; without it a Postgres backend that closed in a window took its CPU out of the
    window, and Postgres once read -0.18 ms a turn).

    The bench process itself (the load generator) is the parent of the whole mesh, so it
    counts alone, without its reaped children.
    """
    if root not in table:
        return None
    if root == os.getpid():
        return table[root][1]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [root], set[int]()
    while todo and len(seen) < 10_000:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        _, own, reaped = table[pid]
        total += own + reaped
        todo.extend(children.get(pid, ()))
    return total


def infra_pids(sandbox: Sandbox) -> dict[str, int]:
    """The backing services' pids: the sandbox's own (Redis, OpenFGA, OPA, and Kafka or
    Postgres when it owns them), else the machine's shared Kafka and Postgres."""
    state = sandbox.base.soma_home / "state"
    pids: dict[str, int] = {}
    if "kafka" not in sandbox.owned:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids["kafka"] = int((state / "kafka.pid").read_text().split()[0])
    if "postgres" not in sandbox.owned:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids["postgres"] = int((state / "postgres" / "postmaster.pid").read_text().split()[0])
    for name in sandbox.owned:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids[name] = sandbox.pid(name)
    return pids


def _machine_busy_ticks() -> int:
    """All CPUs' non-idle ticks (/proc/stat), to see what else competes for the cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


class CpuProbe:
    """Snapshots of CPU ticks per named process tree; read the pids anew at every snap."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids
        self._before: dict[str, tuple[int, int]] = {}
        self._t0 = 0.0
        self._busy0 = 0

    def start(self) -> None:
        table = _proc_table()
        self._t0 = time.monotonic()
        self._busy0 = _machine_busy_ticks()
        self._before = {}
        for name, pid in self._pids().items():
            ticks = _tree_ticks(pid, table)
            if ticks is not None:
                self._before[name] = (pid, ticks)

    def stop(self) -> dict[str, Any]:
        """CPU ms per process since start(), and the wall time; a restarted pid is dropped."""
        table = _proc_table()
        wall = time.monotonic() - self._t0
        busy_ms = (_machine_busy_ticks() - self._busy0) * 1000 / CLK_TCK
        cpu_ms: dict[str, float] = {}
        for name, pid in self._pids().items():
            before = self._before.get(name)
            ticks = _tree_ticks(pid, table)
            if before is None or before[0] != pid or ticks is None:
                continue
            cpu_ms[name] = (ticks - before[1]) * 1000 / CLK_TCK
        return {"wall_s": wall, "cpu_ms": cpu_ms, "machine_busy_ms": busy_ms}


async def count_stored(
    dsn: str,
    turn_ids: list[str],
    timeout_s: float = 60,
    sessions: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Rows in `turns` for these ids, waiting (bounded) for the persistence stage to catch up.

    `sessions` (turn id -> the session the client was told it ran in: the session API's
    answer, a chat completion's `X-Session-Id`) adds `in_session`: the stored turns whose
    row names that session, so a turn stored under another session is not taken as found.
    """
    sessions = sessions or {}
    ids = list(dict.fromkeys(turn_ids))
    expected = [sessions.get(t, "") for t in ids]
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while True:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE t.status = 'completed') AS completed,"
                " count(*) FILTER (WHERE t.session_id = x.session_id) AS in_session"
                " FROM turns t JOIN unnest($1::text[], $2::text[]) AS x(turn_id, session_id)"
                " ON t.turn_id = x.turn_id",
                ids,
                expected,
            )
            assert row is not None  # an aggregate always has its row
            stored = int(row["n"])
            if stored != last:
                last, since = stored, time.monotonic()
            now = time.monotonic()
            if stored >= len(ids) or now > deadline or now - since > 10:
                found = {
                    "total": len(ids),
                    "stored": stored,
                    "completed": int(row["completed"]),
                }
                if sessions:
                    found["in_session"] = int(row["in_session"])
                    found["with_session"] = sum(1 for s in expected if s)
                return found
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def machine_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        return ""

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_changed_files": git("status", "--porcelain").splitlines(),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": os.getloadavg(),
    }


def cpu_summary(cpu: dict[str, Any], turns: int) -> dict[str, Any]:
    """A window's CPU (CpuProbe.stop()) charged per turn and in cores, by process."""
    n = max(1, turns)
    wall = cpu["wall_s"] or 1e-9
    ms = {k: v / n for k, v in cpu["cpu_ms"].items()}
    return {
        "wall_s": cpu["wall_s"],
        "ms_per_turn": ms,
        "cores_used": {k: v / 1000 / wall for k, v in cpu["cpu_ms"].items()},
        "ms_per_turn_total": sum(ms.values()),
        # Everything the machine ran that is not ours (other jobs sharing the cores).
        "other_cores": max(
            0.0, (cpu["machine_busy_ms"] - sum(cpu["cpu_ms"].values())) / 1000 / wall
        ),
    }


def charged_ms(cpu: dict[str, Any], names: Collection[str]) -> float:
    """CPU ms per turn of the named processes together (one side of a comparison)."""
    return float(sum(v for k, v in cpu["ms_per_turn"].items() if k in names))
