"""The benchmarks' CPU accounting: a process tree's CPU includes children that ended."""

from __future__ import annotations

import subprocess
import sys

from bench.accounting import CpuProbe

# A parent (like the postmaster) that, when told, runs a child burning CPU for ~0.3 s,
# reaps it, and says so.
PARENT = """
import subprocess, sys
print("ready", flush=True)
sys.stdin.readline()
burn = "import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass"
subprocess.run([sys.executable, "-c", burn], check=True)
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_child_that_ended_in_the_window_keeps_its_cpu_in_the_tree() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        assert parent.stdout.readline().strip() == "ready"
        probe = CpuProbe(lambda: {"parent": parent.pid})
        probe.start()
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"  # the child is gone, reaped
        cpu_ms = probe.stop()["cpu_ms"]["parent"]
    finally:
        parent.stdin.close()
        parent.wait(timeout=10)
    assert cpu_ms >= 250, cpu_ms
