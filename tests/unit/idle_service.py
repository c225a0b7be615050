"""A stand-in service for the supervisor's tests: says what it was given, then idles until
SIGTERM (or exits at once with IDLE_EXIT's code, to crash-loop)."""

from __future__ import annotations

import os
import signal
import sys
import time

if __name__ == "__main__":
    print(f"idle pid={os.getpid()} mark={os.environ.get('IDLE_MARK', '')}", flush=True)
    if "IDLE_EXIT" in os.environ:
        sys.exit(int(os.environ["IDLE_EXIT"]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(60)
