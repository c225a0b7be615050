"""The supervisor (gateway_runtime/supervisor.py) on a stand-in service: a killed service is
back within 5 s with its own variables, a crash loop backs off up to the cap, SIGTERM stops
everything, and a service does not outlive a killed supervisor."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway_runtime.supervisor import parse_services

ROOT = Path(__file__).resolve().parents[2]
IDLE = "tests.unit.idle_service"


class Run:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.state, self.logs = tmp / "state", tmp / "logs"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SUPERVISOR_RESTART_DELAY_S": "0.1",
            "SUPERVISOR_RESTART_DELAY_MAX_S": "0.4",
            "SUPERVISOR_STOP_TIMEOUT_S": "5",
        }
        command = ["--state-dir", str(self.state), "--log-dir", str(self.logs), *args]
        with open(tmp / "supervisor.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway_runtime.supervisor", *command],
                cwd=ROOT,
                env=env,
                stderr=out,
            )

    def pid(self, name: str) -> int | None:
        try:
            return int((self.state / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text() if path.exists() else ""


def until(check: Callable[[], object], timeout: float = 10) -> float:
    """Seconds until `check()` is true (AssertionError past `timeout`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(*args: str) -> Run:
        runs.append(Run(tmp_path, *args))
        return runs[-1]

    yield start
    for r in runs:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.wait(10)


def test_a_killed_service_is_restarted_with_its_variables_and_sigterm_stops_all(
    run: Callable[..., Run],
) -> None:
    sup = run("--env", "idle:IDLE_MARK=m1", f"idle={IDLE}", f"other={IDLE}")
    until(lambda: sup.pid("idle") and "mark=m1" in sup.log("idle"))
    first, other = sup.pid("idle"), sup.pid("other")
    assert first and other and "mark=m1" not in sup.log("other")

    os.kill(first, signal.SIGKILL)
    took = until(lambda: sup.pid("idle") not in (None, first), timeout=5)
    assert took < 5
    until(lambda: sup.log("idle").count("mark=m1") == 2)
    assert f"idle (pid {first}) exited with signal SIGKILL" in sup.log("idle")
    assert sup.pid("other") == other  # the others are left alone

    second = sup.pid("idle")
    assert second
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(10) == 0
    assert gone(second) and gone(other)
    assert not list(sup.state.glob("*.pid"))


def test_a_crash_loop_backs_off_up_to_the_cap(run: Callable[..., Run]) -> None:
    sup = run("--env", "crash:IDLE_EXIT=3", f"crash={IDLE}")
    until(lambda: sup.log("crash").count("exited with code 3") >= 5)
    delays = re.findall(
        r"exited with code 3 after [\d.]+s; restart \d+ in ([\d.]+)s", sup.log("crash")
    )
    assert [float(d) for d in delays[:5]] == [0.1, 0.2, 0.4, 0.4, 0.4]
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(10) == 0


def test_a_service_does_not_outlive_a_killed_supervisor(run: Callable[..., Run]) -> None:
    sup = run(f"idle={IDLE}")
    until(lambda: sup.pid("idle") and "idle pid=" in sup.log("idle"))
    child = sup.pid("idle")
    assert child
    sup.proc.kill()
    sup.proc.wait(10)
    until(lambda: gone(child), timeout=5)


def test_services_and_their_variables_are_parsed_in_order() -> None:
    services = parse_services(["ingress", "x=some.module"], ["x:A=1", "x:B=b=c"])
    assert [(s.name, s.module, s.env) for s in services] == [
        ("ingress", "ingress", {}),
        ("x", "some.module", {"A": "1", "B": "b=c"}),
    ]
    with pytest.raises(ValueError):
        parse_services(["a", "a"], [])
    with pytest.raises(ValueError):
        parse_services(["a"], ["b:A=1"])
