"""A progress bar for bulk operations, drawn only on a terminal.

Anywhere else (a pipe, a CI log, `tee`) it prints one line per item instead, so the
record of what was done survives.
"""

from __future__ import annotations

import time
from typing import TextIO

REDRAW_S = 0.05  # a thousand fast items must not cost a thousand redraws


class Progress:
    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.done = 0
        self.tty = stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0

    def step(self, line: str, tally: str = "") -> None:
        """One item is finished: `line` says what happened to it, `tally` the totals."""
        self.done += 1
        if not self.tty:
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        now = time.monotonic()
        if self.done < self.total and now - self._drawn < REDRAW_S:
            return
        self._drawn = now
        self.stream.write("\r" + self.bar(now - self._started) + (f"  {tally}" if tally else ""))
        self.stream.write("\x1b[K")  # erase what a longer previous line left
        self.stream.flush()

    def bar(self, elapsed: float) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = round(self.width * share)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (
            f" eta {(self.total - self.done) / rate:.0f}s"
            if rate and self.done < self.total
            else ""
        )
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{share:4.0%} {rate:.1f}/s{eta}"
        )

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
