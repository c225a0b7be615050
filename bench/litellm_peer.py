"""LiteLLM proxy as the peer of `make bench-peer`: installed pinned, configured lean, run.

The peer gets its own venv under `$SOMA_HOME/bench/litellm-<version>/`, never the
gateway's: LiteLLM pins versions of its own (httpx, pydantic, openai) that must not move
the gateway's. The install is cached by a marker file naming the version, so a second
`make bench-peer` installs nothing; one install at a time (a lock file), as
deploy/install.sh does for the gateway's venv.

It runs as its operators would for a fair fight on latency: no database (no spend logs),
no callbacks, no telemetry, the model cost map from the package (this machine reaches no
site but the package registries), a master key (so every request pays for a key check,
as the gateway's do), `--num_workers 2` (one per core).

    python -m bench.litellm_peer            # install (or say it is there) and print the venv
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway_runtime.settings import CommonSettings
from testbed.sandbox import free_port

VERSION = "1.108.7"
REQUIREMENT = f"litellm[proxy]=={VERSION}"


def venv_dir(soma_home: Path | None = None) -> Path:
    home = soma_home or CommonSettings().soma_home
    return home / "bench" / f"litellm-{VERSION}"


def ensure_installed(soma_home: Path | None = None) -> Path:
    """The venv with LiteLLM proxy at VERSION, installing it the first time; its path."""
    venv = venv_dir(soma_home)
    marker = venv / f".installed-{VERSION}"
    if marker.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".litellm-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # another run installed it while this one waited
            return venv
        log = venv.parent / f"litellm-{VERSION}-install.log"
        started = time.monotonic()
        with open(log, "w") as out:
            if not (venv / "bin" / "python").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out
                )
            done = subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", REQUIREMENT],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"pip install {REQUIREMENT} failed (log {log}):\n{tail}")
        marker.touch()
        sys.stderr.write(
            f"installed {REQUIREMENT} in {venv} ({time.monotonic() - started:.0f} s)\n"
        )
    return venv


def config_yaml(upstream_url: str, master_key: str, model: str = "fake") -> str:
    """The proxy's config: one model on the fake upstream, nothing on the side.

    JSON is YAML, so no YAML writer is needed.
    """
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream_url,
                    "api_key": "sk-fake-upstream",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "set_verbose": False,
            "json_logs": False,
            "request_timeout": 30,
        },
        "general_settings": {
            "master_key": master_key,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }
    return json.dumps(config, indent=2) + "\n"


@dataclass
class Peer:
    """A running LiteLLM proxy: its process (the tree's root), port and master key."""

    proc: subprocess.Popen[bytes]
    port: int
    master_key: str
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.master_key}"}

    def stop(self) -> None:
        """SIGTERM to the proxy's process group (uvicorn's workers too), then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start(venv: Path, upstream_url: str, work: Path, workers: int = 2) -> Peer:
    """`litellm --config ... --num_workers N` on a free port, once it answers a chat call.

    `upstream_url` is the fake's OpenAI base (`http://127.0.0.1:<port>/v1`).
    """
    key = "sk-bench-" + secrets.token_hex(16)
    config = work / "litellm.yaml"
    config.write_text(config_yaml(upstream_url, key))
    port = free_port()
    log = work / "litellm.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LITELLM", "DATABASE_URL", "OPENAI", "PYTHONPATH"))
    }
    env.update(
        LITELLM_LOG="ERROR",
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the cost map from the internet
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
        PYTHONUNBUFFERED="1",
    )
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                str(workers),
                "--telemetry",
                "False",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the workers too
        )
    peer = Peer(proc, port, key, log)
    try:
        _wait_ready(peer)
    except BaseException:
        peer.stop()
        raise
    return peer


def _wait_ready(peer: Peer, timeout_s: float = 180) -> None:
    """Until a (non-streamed) chat call through the proxy succeeds: every worker is up
    only then, which /health/liveliness does not say."""
    body = {"model": "fake", "messages": [{"role": "user", "content": "ready?"}]}
    url = f"http://127.0.0.1:{peer.port}/v1/chat/completions"
    deadline = time.monotonic() + timeout_s
    ok = 0
    last: object = None
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            raise RuntimeError(
                f"litellm exited with {peer.proc.returncode}:\n{peer.log.read_text()[-3000:]}"
            )
        try:
            r = httpx.post(url, json=body, headers=peer.headers, timeout=10)
            last = r.status_code
            if r.status_code == 200:
                ok += 1
                if ok >= 2 * 2:  # a few, so both workers are likely to have answered
                    return
                continue
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"litellm not ready in {timeout_s:.0f} s: {last}")


if __name__ == "__main__":
    sys.stdout.write(f"{ensure_installed()}\n")
