"""How busy the machine was while the chaos load ran: its cores, and the load generator's
own share. On a machine shared with other work a slow turn may be the machine's doing,
not the fault's; the report says which it could have been."""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """All CPUs' non-idle ticks (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


class MachineCpu:
    """Started at construction; the first `stop()` fixes the window, later calls repeat it."""

    def __init__(self) -> None:
        self._t0, self._busy0, self._own0 = time.monotonic(), _busy_ticks(), _own_s()
        self._result: dict[str, float] | None = None

    def stop(self) -> dict[str, float]:
        if self._result is None:
            wall = max(1e-9, time.monotonic() - self._t0)
            self._result = {
                "wall_s": wall,
                "cores": os.cpu_count() or 1,
                "busy_cores": (_busy_ticks() - self._busy0) / CLK_TCK / wall,
                "load_generator_cores": (_own_s() - self._own0) / wall,
                "loadavg_1m_after": os.getloadavg()[0],
            }
        return self._result
