"""The SRE CLI (`soma-gateway dlq ...`) against the `/v1/requeue` contract.

TEMPORARY: the API here is a minimal fake of the contract (a real HTTP server on loopback,
in a thread of the test process) until the gateway's own `/v1/requeue` routes exist; an
end-to-end check of the CLI against a real mesh is to replace it.

Most cases call `soma_cli.__main__.main` in-process; two run the installed console script
(one on a pseudo-terminal, for the progress bar and the confirmation prompt).
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from soma_cli.__main__ import main
from soma_cli.filters import parse_time
from soma_cli.table import COLUMNS

OPERATOR, TENANT_ADMIN, TURNS_ONLY = "op-key", "admin-t1", "turns-key"
PAGE_CAP = 25  # the fake answers at most this many per page, so the CLI must follow cursors
LONG_SESSION = "session-" + "x" * 70


def _dead_letter(n: int, now: datetime) -> dict[str, Any]:
    """1-40: persistence/DependencyUnavailable 5 min ago (the outage); 41-50: llm errors
    5 min ago; 51-60: persistence/DependencyUnavailable 3 h ago. 7 replayed, 8 discarded."""
    stage, error_type, ago = "persistence", "DependencyUnavailable", timedelta(minutes=5)
    if 41 <= n <= 50:
        stage, error_type = "llm", "AllDeploymentsFailed"
    if n > 50:
        ago = timedelta(hours=3)
    at = (now - ago).isoformat()
    status = {7: "replayed", 8: "discarded"}.get(n, "pending")
    return {
        "id": str(n),
        "session_id": LONG_SESSION if n == 1 else f"s-{n}",
        "event_id": f"e-{n}",
        "tenant": "t1" if n % 2 else "t2",
        "stage": stage,
        "source_topic": f"soma.turn.{stage}",
        "source_partition": n % 4,
        "source_offset": 1000 + n,
        "error_type": error_type,
        "error_message": f"connection refused while writing turn {n}: " + "details " * 19 + "end",
        "attempts": 3,
        "first_failed_at": at,
        "last_failed_at": at,
        "status": status,
        "replays": 1 if status == "replayed" else 0,
        "replayed_at": at if status == "replayed" else None,
        "replayed_by": "key:0000" if status == "replayed" else None,
        "discarded_at": at if status == "discarded" else None,
        "discarded_by": "key:0000" if status == "discarded" else None,
    }


class FakeRequeueApi:
    def __init__(self) -> None:
        # Ages count from the fake's start, not the module's import: a long suite runs
        # between the two, and `--since 10m` must still find the recent outage.
        now = datetime.now(UTC)
        self.items = {str(n): _dead_letter(n, now) for n in range(1, 61)}
        self.calls: list[tuple[str, str]] = []
        # id -> (status, code) that replay/discard answer instead (a failure, a race)
        self.answer: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()

    def changes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "GET"]


def _handler(api: FakeRequeueApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _deny(self, status: int, code: str, message: str) -> None:
            self._send(status, {"detail": {"code": code, "message": message}})

        def _tenant(self) -> tuple[bool, str | None]:
            """(allowed, the caller's tenant: None for an operator, who sees all); a
            refusal is answered here."""
            auth = self.headers.get("authorization", "")
            key = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            if key == OPERATOR:
                return True, None
            if key == TENANT_ADMIN:
                return True, "t1"
            if key is None:
                self._deny(401, "missing_credentials", "an API key is required")
            elif key == TURNS_ONLY:
                self._deny(403, "insufficient_scope", "this needs the 'admin' scope")
            else:
                self._deny(401, "invalid_credentials", "unknown API key")
            return False, None

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            with api.lock:
                api.calls.append((method, self.path))
            allowed, tenant = self._tenant()
            if not allowed:
                return
            parts = [unquote(p) for p in url.path.split("/") if p]
            if parts[:2] != ["v1", "requeue"]:
                return self._deny(404, "not_found", "no such route")
            if len(parts) == 2 and method == "GET":
                return self._list(parse_qs(url.query), tenant)
            item = api.items.get(parts[2]) if len(parts) > 2 else None
            if item is None or (tenant is not None and item["tenant"] != tenant):
                return self._deny(404, "dead_letter_not_found", f"no dead letter {parts[2]!r}")
            if len(parts) == 3 and method == "GET":
                return self._send(200, item)
            action = {("POST", "resolve"): "replayed", ("DELETE", None): "discarded"}.get(
                (method, parts[3] if len(parts) > 3 else None)
            )
            if action is None:
                return self._deny(405, "method_not_allowed", "no")
            if item["id"] in api.answer:
                status, code = api.answer[item["id"]]
                return self._deny(status, code, f"{code} (injected)")
            if item["status"] != "pending":
                code = "discarded" if item["status"] == "discarded" else "already_replayed"
                return self._deny(409, code, f"dead letter {item['id']} is {item['status']}")
            with api.lock:
                item["status"] = action
                item[f"{action}_at"] = datetime.now(UTC).isoformat()
                item[f"{action}_by"] = "key:op"
                item["replays"] += action == "replayed"
            self._send(202 if action == "replayed" else 200, item)

        def _list(self, query: dict[str, list[str]], tenant: str | None) -> None:
            q = {k: v[0] for k, v in query.items()}
            limit = int(q.get("limit", "50"))
            if not 1 <= limit <= 500:
                return self._deny(422, "invalid_request", "limit: 1..500")
            since = datetime.fromisoformat(q["since"]) if "since" in q else None
            until = datetime.fromisoformat(q["until"]) if "until" in q else None
            after = int(q.get("cursor", "0"))
            selected = []
            for item in sorted(api.items.values(), key=lambda i: int(i["id"])):
                failed = datetime.fromisoformat(item["last_failed_at"])
                if (
                    int(item["id"]) <= after
                    or (tenant is not None and item["tenant"] != tenant)
                    or any(
                        k in q and item[k] != q[k]
                        for k in ("stage", "error_type", "tenant", "session_id", "status")
                    )
                    or (since is not None and failed < since)
                    or (until is not None and failed > until)
                ):
                    continue
                selected.append(item)
            page = selected[: min(limit, PAGE_CAP)]
            more = len(selected) > len(page)
            self._send(200, {"items": page, "next_cursor": page[-1]["id"] if more else None})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


@pytest.fixture
def api() -> Iterator[tuple[FakeRequeueApi, str]]:
    fake = FakeRequeueApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No key from the machine: a `make up` stack's admin key must never be picked up."""
    monkeypatch.setenv("SOMA_HOME", str(tmp_path))
    monkeypatch.delenv("SOMA_API_KEY", raising=False)
    monkeypatch.delenv("SOMA_GATEWAY_URL", raising=False)
    return tmp_path


def cli(
    capsys: pytest.CaptureFixture[str], url: str, *args: str, key: str | None = OPERATOR
) -> tuple[int, str, str]:
    flags = ["--url", url] + (["--key", key] if key else [])
    code = main([*flags, *args])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[str]:
    """The table's data rows (the header is the first line)."""
    return [line for line in out.splitlines()[1:] if line.strip()]


def ids_of(out: str) -> list[int]:
    return [int(line.split()[0]) for line in rows(out)]


def test_list_follows_pages_and_filters_in_aligned_columns(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    code, out, _ = cli(
        capsys, url, "dlq", "list", "--since", "10m", "--stage", "persistence",
        "--error-type", "DependencyUnavailable",
    )  # fmt: skip
    assert code == 0
    assert ids_of(out) == [n for n in range(1, 41) if n not in (7, 8)]  # pending by default
    lists = [p for m, p in fake.calls if p.startswith("/v1/requeue?")]
    assert len(lists) == 2 and "cursor=27" in lists[1]  # 38 matches, 25 a page
    assert "status=pending" in lists[0] and "since=" in lists[0]
    header = out.splitlines()[0]
    assert header.split() == [h for h, _, _ in COLUMNS]
    for line in rows(out):  # every value starts under its header
        assert line[header.index("STATUS") :].startswith("pending")
        assert line[header.index("STAGE") :].startswith("persistence")
        assert line[header.index("REPLAYS") :].strip() == "0"


def test_long_values_are_cut_and_ids_never(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = api
    code, out, _ = cli(capsys, url, "dlq", "list", "--session", LONG_SESSION)
    assert code == 0
    [row] = rows(out)
    assert row.split()[0] == "1"
    session_cell = row.split()[4]
    assert session_cell.endswith("…") and len(session_cell) == 24
    assert LONG_SESSION.startswith(session_cell[:-1])


def test_list_limit_json_and_tenant_admin_scope(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = api
    code, out, err = cli(capsys, url, "dlq", "list", "--limit", "5")
    assert code == 0 and ids_of(out) == [1, 2, 3, 4, 5]
    assert "more match" in err
    code, out, _ = cli(capsys, url, "dlq", "list", "--status", "all", "--json", key=TENANT_ADMIN)
    items = json.loads(out)
    assert code == 0 and len(items) == 30 and {i["tenant"] for i in items} == {"t1"}
    code, out, _ = cli(capsys, url, "dlq", "list", "--status", "replayed", "--json")
    assert [i["id"] for i in json.loads(out)] == ["7"]
    code, out, _ = cli(capsys, url, "dlq", "list", "--stage", "nope")
    assert code == 0 and "no dead letters match" in out


def test_show_prints_every_field(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    code, out, _ = cli(capsys, url, "dlq", "show", "3")
    assert code == 0
    assert fake.items["3"]["error_message"] in out  # whole, never cut
    assert "source_offset" in out and "1003" in out
    code, out, _ = cli(capsys, url, "dlq", "show", "3", "--json")
    assert json.loads(out) == fake.items["3"]
    code, _, err = cli(capsys, url, "dlq", "show", "999")
    assert code == 1 and "no dead letter '999'" in err


def test_replay_by_id_reports_replayed_skipped_and_failed(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    code, out, err = cli(capsys, url, "dlq", "replay", "1", "7", "8", "999", "1")
    assert code == 1  # 999 does not exist
    assert "replayed 1, skipped 2 (already_replayed: 1, discarded: 1), failed 1" in out
    assert "failed 999: 404 dead_letter_not_found" in out
    assert fake.items["1"]["status"] == "replayed" and fake.items["1"]["replays"] == 1
    # not a terminal: one line per item instead of a bar
    assert err.splitlines()[:2] == ["replayed 1", "skipped 7: already_replayed"]
    assert [c for c in fake.changes() if c[1].startswith("/v1/requeue/1/")] == [
        ("POST", "/v1/requeue/1/resolve")
    ]  # an ID given twice is replayed once


def test_dry_run_changes_nothing(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    code, out, err = cli(
        capsys, url, "dlq", "replay", "--all", "--since", "10m", "--stage", "persistence",
        "--dry-run",
    )  # fmt: skip
    assert code == 0
    assert "38 pending dead letters match" in err
    assert "dry run: would replay 38; nothing was changed" in out
    assert len(ids_of(out.split("dry run:")[0])) == 38
    code, out, _ = cli(capsys, url, "dlq", "discard", "2", "7", "--dry-run")
    assert code == 0 and "would discard 1, skip 1 replayed; nothing was changed" in out
    assert fake.changes() == []


def test_a_bulk_change_needs_yes_without_a_terminal(
    api: tuple[FakeRequeueApi, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, url = api
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal
    code, _, err = cli(capsys, url, "dlq", "replay", "--all", "--stage", "llm")
    assert code == 2 and "without --yes" in err
    assert fake.changes() == []


def test_replay_all_after_an_outage(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    fake.answer["12"] = (500, "internal_error")
    fake.answer["13"] = (409, "already_replayed")  # another operator, just before
    fake.answer["14"] = (409, "key_revoked")  # stays pending: listed for a person
    code, out, err = cli(
        capsys, url, "dlq", "replay", "--all", "--since", "10m", "--stage", "persistence",
        "--error-type", "DependencyUnavailable", "--yes",
    )  # fmt: skip
    assert code == 1  # one failed
    assert "replayed 35, skipped 2 (already_replayed: 1, key_revoked: 1), failed 1" in out
    assert "  skipped 14: key_revoked: key_revoked (injected)" in out
    assert "  failed 12: 500 internal_error" in out
    assert "skipped 13" not in out  # done already: nothing to look at
    assert len(err.splitlines()) == 1 + 38  # "38 ... match", then a line per item
    statuses = {n: fake.items[str(n)]["status"] for n in range(1, 61)}
    assert all(statuses[n] == "replayed" for n in range(1, 41) if n not in (8, 12, 13, 14))
    assert statuses[12] == statuses[13] == statuses[14] == "pending"
    assert statuses[8] == "discarded"
    assert all(statuses[n] == "pending" for n in range(41, 61))  # other stage, or older
    del fake.answer["12"]
    code, out, _ = cli(capsys, url, "dlq", "replay", "12", "--yes")
    assert code == 0 and out.startswith("replayed 1, skipped 0, failed 0")


def test_a_bulk_change_stops_when_the_gateway_keeps_answering_503(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    for n in (43, 44, 45):
        fake.answer[str(n)] = (503, "unavailable")
    code, out, err = cli(capsys, url, "dlq", "replay", "--all", "--stage", "llm", "--yes")
    assert code == 1
    assert "replayed 2, skipped 0, failed 3, not attempted 5" in out
    assert "stopped: 3 answers of 503 in a row" in err
    assert [fake.items[str(n)]["status"] for n in (41, 42, 46)] == ["replayed"] * 2 + ["pending"]


def test_discard_by_filter(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    code, out, _ = cli(capsys, url, "dlq", "discard", "--all", "--stage", "llm", "--yes")
    assert code == 0 and "discarded 10, skipped 0, failed 0" in out
    assert {fake.items[str(n)]["status"] for n in range(41, 51)} == {"discarded"}
    code, out, _ = cli(capsys, url, "dlq", "discard", "--all", "--stage", "llm", "--yes")
    assert code == 0 and "nothing to discard" in out


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "replay"],
        ["dlq", "replay", "1", "--all"],
        ["dlq", "discard", "1", "--stage", "llm"],
        ["dlq", "list", "--since", "yesterday"],
        ["dlq", "list", "--limit", "0"],
        ["dlq", "list", "--status", "lost"],
        ["dlq"],
        ["nope"],
    ],
)
def test_usage_errors_exit_2(
    args: list[str], api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    assert main(["--url", url, *args]) == 2
    assert "usage:" in capsys.readouterr().err
    assert fake.calls == []


def test_auth_and_connection_errors_say_what_to_do(
    api: tuple[FakeRequeueApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = api
    code, _, err = cli(capsys, url, "dlq", "list", key=None)
    assert code == 1 and "401 missing_credentials" in err
    assert "SOMA_API_KEY" in err and "admin-key" in err
    code, _, err = cli(capsys, url, "dlq", "replay", "1", key=TURNS_ONLY)
    assert code == 1 and "403 insufficient_scope" in err and "operator key" in err
    code, _, err = cli(capsys, "http://127.0.0.1:9", "dlq", "list")
    assert code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in err
    assert "Connection refused" in err
    code, _, err = cli(capsys, url + "/not-a-gateway", "dlq", "list")
    assert code == 1 and "has no dead-letter API (/v1/requeue answered 404)" in err


def test_relative_and_absolute_times() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_time("10m", now) == now - timedelta(minutes=10)
    assert parse_time("1h30m", now) == now - timedelta(minutes=90)
    assert parse_time("2d", now) == now - timedelta(days=2)
    assert parse_time("2026-03-01T11:00:00Z") == datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert parse_time("2026-03-01 11:00") == datetime(2026, 3, 1, 11, tzinfo=UTC)
    offset = parse_time("2026-03-01T13:00:00+02:00")
    assert offset == datetime(2026, 3, 1, 11, tzinfo=UTC)
    for bad in ("10 minutes", "m10", "", "5x"):
        with pytest.raises(ValueError):
            parse_time(bad)


def _console_script() -> Path:
    script = Path(sys.executable).with_name("soma-gateway")
    assert script.exists(), "not installed: pip install -e . (make up does)"
    return script


def _script_env(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOMA_API_KEY", "PYTHONPATH")}
    return {**env, "SOMA_GATEWAY_URL": url, "SOMA_HOME": str(home)}


def test_the_console_script_uses_make_ups_admin_key(
    api: tuple[FakeRequeueApi, str], cli_env: Path
) -> None:
    _, url = api
    (cli_env / "admin-key").write_text(OPERATOR + "\n")
    done = subprocess.run(
        [_console_script(), "dlq", "list", "--limit", "3", "--json"],
        env=_script_env(url, cli_env),
        cwd=cli_env,  # not the checkout: the installed package must be found
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert [i["id"] for i in json.loads(done.stdout)] == ["1", "2", "3"]


def test_on_a_terminal_it_asks_and_draws_a_progress_bar(
    api: tuple[FakeRequeueApi, str], cli_env: Path
) -> None:
    fake, url = api
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [_console_script(), "--key", OPERATOR, "dlq", "replay", "--all", "--stage", "persistence"],
        env=_script_env(url, cli_env),
        stdin=slave,
        stderr=slave,
        stdout=subprocess.PIPE,
        text=False,
    )
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(master, b"y\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    out = proc.communicate(timeout=10)[0].decode()
    os.close(master)
    assert proc.returncode == 0, seen
    assert b"replay 48 dead letters? [y/N]" in seen
    assert b"\r[" + b"#" * 30 + b"] 48/48 100%" in seen  # the finished bar
    assert b"replayed 48" not in seen.split(b"[y/N]")[0]
    assert "replayed 48, skipped 0, failed 0" in out
    assert sum(i["status"] == "replayed" for i in fake.items.values()) == 49  # + id 7
