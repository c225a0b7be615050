"""`python -m gateway_runtime.supervisor`: run services as children, restart the ones that die.

The local profile's process manager (`deploy/services.sh` runs it as its one daemon; the
testbed runs a mesh under it too). Each service is `python -m <module>`, its output
appended to `<log-dir>/<name>.log` and its pid in `<state-dir>/<name>.pid` while it runs,
so it can be watched and killed on its own. A service that exits while the supervisor is
not stopping is restarted after SUPERVISOR_RESTART_DELAY_S; while it keeps dying within
STABLE_AFTER_S of its start the delay doubles, up to SUPERVISOR_RESTART_DELAY_MAX_S, so a
crash loop costs little. On SIGTERM or SIGINT every service gets SIGTERM, and SIGKILL
after SUPERVISOR_STOP_TIMEOUT_S; a service outlives a killed supervisor by no more than
its own shutdown (the kernel sends it SIGTERM when the supervisor dies).

    python -m gateway_runtime.supervisor --state-dir DIR --log-dir DIR \
        [--env SERVICE:KEY=VALUE]... SERVICE[=MODULE]...
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

from gateway_runtime.logs import configure_logging
from gateway_runtime.settings import SupervisorSettings

log = logging.getLogger(__name__)
# A service that ran this long before dying was healthy: its next restart waits the
# shortest delay again.
STABLE_AFTER_S = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    start_at: float = 0.0  # when it is due to (re)start, while proc is None
    quick_exits: int = 0  # consecutive deaths within STABLE_AFTER_S of a start
    restarts: int = 0


def _child_setup(parent: int, env: dict[str, str]) -> Callable[[], None]:
    """Runs in the child before exec: die with the supervisor, add the service's variables
    (written to the child's own environment; the rest is inherited)."""

    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def setup() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the supervisor died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
        for key, value in env.items():
            os.putenv(key, value)

    return setup


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    def __init__(
        self,
        services: Sequence[Service],
        settings: SupervisorSettings,
        *,
        state_dir: Path,
        log_dir: Path,
    ) -> None:
        self.services = list(services)
        self.settings = settings
        self.state_dir = state_dir
        self.log_dir = log_dir
        self._stopping = False

    # ---- files -----------------------------------------------------------------------

    def pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _note(self, service: Service, text: str) -> None:
        """A line in the service's own log, so `make logs` shows why it restarted."""
        with open(self.log_dir / f"{service.name}.log", "a") as out:
            out.write(f"\n=== {datetime.now().astimezone().isoformat(timespec='seconds')} {text}\n")

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Until SIGTERM/SIGINT: start what is due, notice what died; then stop everything."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only wakes the loop up
        log.info("supervisor started", extra={"fields": {"children": self._names()}})
        while not self._stopping:
            now = time.monotonic()
            for service in self.services:
                if service.proc is not None and service.proc.poll() is not None:
                    self._exited(service, now)
                if service.proc is None and service.start_at <= now and not self._stopping:
                    self._spawn(service)
            due = [s.start_at for s in self.services if s.proc is None]
            timeout = min([1.0, *(max(0.0, t - time.monotonic()) for t in due)])
            select.select([wake_r], [], [], timeout)
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
        self._shutdown()
        return 0

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _names(self) -> list[str]:
        return [s.name for s in self.services]

    def _spawn(self, service: Service) -> None:
        self._note(service, f"start {service.name}")
        with open(self.log_dir / f"{service.name}.log", "ab") as out:
            service.proc = subprocess.Popen(
                [sys.executable, "-m", service.module],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(os.getpid(), service.env),
            )
        service.started_at = time.monotonic()
        tmp = self.pidfile(service.name).with_suffix(".pid.tmp")
        tmp.write_text(f"{service.proc.pid}\n")
        tmp.replace(self.pidfile(service.name))
        log.info(
            "service started",
            extra={"fields": {"child": service.name, "pid": service.proc.pid}},
        )

    def _exited(self, service: Service, now: float) -> None:
        assert service.proc is not None
        pid, code = service.proc.pid, service.proc.returncode
        service.proc = None
        self.pidfile(service.name).unlink(missing_ok=True)
        ran = now - service.started_at
        if ran >= STABLE_AFTER_S:
            service.quick_exits = 0
        s = self.settings
        delay = min(
            s.supervisor_restart_delay_s * 2**service.quick_exits, s.supervisor_restart_delay_max_s
        )
        service.quick_exits += 1
        service.restarts += 1
        service.start_at = now + delay
        fields = {
            "child": service.name,
            "pid": pid,
            "exit": _describe(code),
            "ran_s": round(ran, 1),
            "restart_in_s": delay,
            "restarts": service.restarts,
        }
        log.warning("service exited: restarting", extra={"fields": fields})
        self._note(
            service,
            f"{service.name} (pid {pid}) exited with {_describe(code)} after {ran:.1f}s;"
            f" restart {service.restarts} in {delay:g}s",
        )

    def _shutdown(self) -> None:
        running = [s for s in self.services if s.proc is not None]
        log.info("stopping", extra={"fields": {"children": [s.name for s in running]}})
        for service in running:
            assert service.proc is not None
            service.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.supervisor_stop_timeout_s
        for service in running:
            assert service.proc is not None
            try:
                service.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "SIGKILL: did not stop in time", extra={"fields": {"child": service.name}}
                )
                service.proc.kill()
                service.proc.wait()
            self.pidfile(service.name).unlink(missing_ok=True)
            service.proc = None
        log.info("supervisor stopped")


def parse_services(specs: Sequence[str], env_specs: Sequence[str]) -> list[Service]:
    """`name[=module]` specs and `name:KEY=VALUE` variables → services, in order."""
    services: dict[str, Service] = {}
    for spec in specs:
        name, _, module = spec.partition("=")
        if not name or name in services:
            raise ValueError(f"bad or repeated service: {spec!r}")
        services[name] = Service(name, module or name)
    for spec in env_specs:
        name, _, assignment = spec.partition(":")
        key, eq, value = assignment.partition("=")
        if name not in services or not key or not eq:
            raise ValueError(f"--env wants SERVICE:KEY=VALUE for a listed service, not {spec!r}")
        services[name].env[key] = value
    return list(services.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_runtime.supervisor")
    parser.add_argument("--state-dir", type=Path, required=True, help="where <name>.pid go")
    parser.add_argument("--log-dir", type=Path, required=True, help="where <name>.log go")
    parser.add_argument("--env", action="append", default=[], metavar="SERVICE:KEY=VALUE")
    parser.add_argument("services", nargs="+", metavar="SERVICE[=MODULE]")
    args = parser.parse_args(argv)
    settings = SupervisorSettings()
    configure_logging(settings.service_name, settings.log_level)
    try:
        services = parse_services(args.services, args.env)
    except ValueError as exc:
        parser.error(str(exc))
    return Supervisor(services, settings, state_dir=args.state_dir, log_dir=args.log_dir).run()


if __name__ == "__main__":
    sys.exit(main())
