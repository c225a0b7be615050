"""The chaos run's one table (Markdown), and its place in docs/reliability.md.

The document keeps the latest table of each kind of run between markers
(`<!-- chaos:full -->` ... `<!-- /chaos:full -->`, likewise `quick`); a run replaces its
own kind's block and leaves the rest of the document as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.chaos.audit import TopicCount
from bench.chaos.verdict import Outcomes, Recovery
from bench.chaos.watchdog import Death

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
GOAL = "goal 0"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _few(items: Sequence[str], n: int = 3) -> str:
    if not items:
        return ""
    return " (" + ", ".join(items[:n]) + (", ..." if len(items) > n else "") + ")"


def table(
    o: Outcomes, topics: dict[str, TopicCount], recoveries: list[Recovery], namespace: str
) -> list[str]:
    """One Markdown table: the turns' outcomes, the doubles, each topic's duplicate
    records, each fault's recovery."""
    failed = ", ".join(f"{code} {n}" for code, n in sorted(o.failed.items())) or "none"
    refused = ", ".join(f"{why}: {n}" for why, n in sorted(o.refused.items())) or "none"
    rows: list[tuple[str, str]] = [
        ("turns offered (open loop)", f"{o.offered}"),
        ("not accepted (no 202 within 15 s of retries)", f"{o.offered - o.accepted} ({refused})"),
        ("**accepted**", f"**{o.accepted}**"),
        ("completed (assistant.final)", f"{o.completed}"),
        ("failed with an actionable error", f"{sum(o.failed.values())} ({failed})"),
        ("**stuck** (no outcome reached the client; stored or dead-lettered)",
         f"**{len(o.stuck)}**{_few(o.stuck)} ({GOAL})"),
        ("**lost** (no outcome, not stored, not dead-lettered)",
         f"**{len(o.lost)}**{_few(o.lost)} ({GOAL})"),
        ("**answered twice** (more than one assistant.final)",
         f"**{len(o.answered_twice)}**{_few(o.answered_twice)} ({GOAL}; the logs held the "
         f"final of {o.in_logs} of the {o.completed} completed turns)"),
        ("**both a final and an error** for one turn",
         f"**{len(o.both_outcomes)}**{_few(o.both_outcomes)} ({GOAL})"),
        ("**stored twice** (a session with 2 turns, or a turn with > 2 messages)",
         f"**{len(o.stored_twice)}**{_few(o.stored_twice)} ({GOAL})"),
        ("completed but not stored", f"{o.completed_not_stored}"),
        ("finals that are not the whole answer", f"{o.wrong_answers}"),
        ("accepted after a retried POST / SSE reconnects", f"{o.retried_posts} / {o.reconnects}"),
        ("completed turns, arrival to final: p50 / p99 / max",
         " / ".join(_s(o.turn_s.get(k)) for k in ("p50", "p99", "max"))),
    ]  # fmt: skip
    prefix = namespace + "."
    for topic, c in topics.items():
        partial = "" if c.complete else ", not read to its end"
        rows.append(
            (
                f"duplicate records in `{topic.removeprefix(prefix)}`",
                f"{c.extra_records} extra records of {c.duplicated_ids} of {c.event_ids} "
                f"event ids ({c.records} records{partial})",
            )
        )
    for r in recoveries:
        if r.injected_s is None:
            rows.append((f"recovery: {r.fault}", f"not injected: {r.note}"))
            continue
        note = f"; {r.note}" if r.note else ""
        recovered = "not within its window" if r.recovered_s is None else _s(r.recovered_s)
        rows.append(
            (
                f"recovery: {r.fault} (at {r.injected_s:.0f} s, back after {_s(r.down_s)})",
                f"first ok {_s(r.first_ok_s)}, recovered {recovered}; "
                f"{r.hurt} of {r.arrivals} arrivals hurt{note}",
            )
        )
    out = ["| measure | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def deaths(found: Sequence[Death]) -> str:
    """The processes that died without a fault of the run (the watchdog started them
    again), with the last error each logged."""
    if not found:
        return "No process died on its own."
    by: dict[str, list[Death]] = {}
    for d in found:
        by.setdefault(d.process, []).append(d)
    parts = [
        f"{name} x{len(ds)} (first at {ds[0].at_s:.0f} s, exit {ds[0].exit_code}: "
        f"`{ds[0].last_error[:150]}`)"
        for name, ds in by.items()
    ]
    return "Died on their own (started again): " + "; ".join(parts) + "."


def header(
    info: dict[str, Any],
    command: str,
    mode: str,
    load_s: float,
    cpu: dict[str, float],
    base: dict[str, float],
    extra: str,
) -> list[str]:
    dirty = " (with uncommitted changes)" if info.get("git_changed_files") else ""
    load = " ".join(f"{x:.1f}" for x in info.get("loadavg_before", ()))
    normal = (
        f"before the first fault {base.get('completed', 0):.0f} of {base.get('arrivals', 0):.0f}"
        f" arrivals completed, turn time p50 {_s(base.get('p50'))}, p99 {_s(base.get('p99'))}"
    )
    return [
        f"`{command}` ({mode} run), {info['date']}, commit {info['git_commit'][:10]}{dirty}.",
        f"Machine: {info['nproc']} cores ({info['cpu_model']}), shared with other work: load "
        f"average {load} before the run; during its {load_s:.0f} s of load "
        f"{cpu['busy_cores']:.2f} of {cpu['cores']:.0f} cores busy (the load generator "
        f"{cpu['load_generator_cores']:.2f}), load average {cpu['loadavg_1m_after']:.1f} "
        f"after; {normal}. {extra}",
        "",
    ]


def write_doc(mode: str, block: list[str], doc: Path = DOC) -> None:
    """Replace the `mode` block of the document (append it if the markers are missing)."""
    begin, end = f"<!-- chaos:{mode} -->", f"<!-- /chaos:{mode} -->"
    text = doc.read_text() if doc.exists() else ""
    body = "\n".join([begin, *block, end])
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    doc.write_text(text)
