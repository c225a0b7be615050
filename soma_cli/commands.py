"""`soma-gateway dlq list|show|replay|discard`: what each does with the REST client.

Exit codes: 0 done, 1 something failed (an item, the gateway, the key), 2 usage error
(which includes a bulk change asked for without `--yes` where no one can confirm it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from soma_cli.client import ApiError, DeadLetter, Fatal, RequeueClient
from soma_cli.filters import Filters
from soma_cli.progress import Progress
from soma_cli.table import details, table

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
MAX_LISTED = 20  # failures (and skips that need a person) listed after a bulk change
UNAVAILABLE_STOP = 3
DONE_ALREADY = ("already_replayed", "discarded")  # 409s that mean: nothing left to do


@dataclass(frozen=True)
class Console:
    out: TextIO
    err: TextIO
    stdin: TextIO

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)


@dataclass(frozen=True)
class Action:
    name: str  # the command: replay, discard
    done: str  # what a finished item is: replayed, discarded
    call: Callable[[RequeueClient, str], DeadLetter]


REPLAY = Action("replay", "replayed", RequeueClient.replay)
DISCARD = Action("discard", "discarded", RequeueClient.discard)


def list_dead_letters(
    client: RequeueClient, filters: Filters, limit: int, as_json: bool, console: Console
) -> int:
    items = list(client.matching(filters, limit + 1))
    more = len(items) > limit
    items = items[:limit]
    if as_json:
        console.say(json.dumps(items, indent=2))
    elif items:
        console.say(table(items))
    else:
        console.say(f"no dead letters match ({filters.describe()})")
    if more:
        console.note(f"showing the first {limit}; more match (--limit to see more)")
    return OK


def show_dead_letter(
    client: RequeueClient, dead_letter_id: str, as_json: bool, console: Console
) -> int:
    try:
        item = client.get(dead_letter_id)
    except ApiError as exc:
        console.note(f"error: {exc.message if exc.status == 404 else exc}")
        return FAILED
    console.say(json.dumps(item, indent=2) if as_json else details(item))
    return OK


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (id, code, message)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None  # why the rest was not attempted
    not_attempted: int = 0

    def tally(self, action: Action) -> str:
        done, skipped, failed = len(self.done), len(self.skipped), len(self.failed)
        return f"{action.done} {done}, skipped {skipped}, failed {failed}"


def bulk(
    client: RequeueClient,
    action: Action,
    console: Console,
    *,
    ids: list[str],
    filters: Filters | None,
    dry_run: bool,
    yes: bool,
) -> int:
    """Replay or discard the dead letters named, or (`filters`) every pending one that
    matches: all of them are found first, so acting on some cannot move the rest out of
    the pages still to read."""
    if filters is not None:
        items = list(client.matching(filters))
        targets = [str(item["id"]) for item in items]
        console.note(f"{len(targets)} pending dead letters match ({filters.describe()})")
        if dry_run:
            if items:
                console.say(table(items))
            console.say(f"dry run: would {action.name} {len(targets)}; nothing was changed")
            return OK
        if not targets:
            console.say(f"nothing to {action.name}")
            return OK
        refused = None if yes else _confirm(console, f"{action.name} {len(targets)} dead letters")
        if refused is not None:
            return refused
    else:
        targets = list(dict.fromkeys(ids))
        if dry_run:
            return _dry_run_ids(client, action, console, targets)
    return _apply(client, action, console, targets)


def _confirm(console: Console, what: str) -> int | None:
    """None to go ahead; else the exit code (2: no terminal to ask, and no --yes)."""
    if not console.stdin.isatty():
        console.note(f"refusing to {what} without --yes (no terminal to ask)")
        return USAGE
    console.err.write(f"{what}? [y/N] ")
    console.err.flush()
    if console.stdin.readline().strip().lower() in ("y", "yes"):
        return None
    console.note("nothing was changed")
    return FAILED


def _dry_run_ids(
    client: RequeueClient, action: Action, console: Console, targets: list[str]
) -> int:
    found, missing = [], []
    for dead_letter_id in targets:
        try:
            found.append(client.get(dead_letter_id))
        except ApiError as exc:
            missing.append(f"{dead_letter_id}: {exc.message or exc.code}")
    if found:
        console.say(table(found))
    would = [str(i["id"]) for i in found if i.get("status") == "pending"]
    skip = Counter(str(i.get("status")) for i in found if i.get("status") != "pending")
    summary = f"dry run: would {action.name} {len(would)}"
    if skip:
        summary += ", skip " + ", ".join(f"{n} {status}" for status, n in skip.items())
    console.say(summary + "; nothing was changed")
    for line in missing:
        console.say(f"  not found: {line}")
    return FAILED if missing else OK


def _apply(client: RequeueClient, action: Action, console: Console, targets: list[str]) -> int:
    outcome = Outcome()
    progress = Progress(len(targets), console.err)
    unavailable = 0  # 503s in a row: the gateway says a dependency is down; stop, not spin
    try:
        for n, dead_letter_id in enumerate(targets):
            try:
                action.call(client, dead_letter_id)
                outcome.done.append(dead_letter_id)
                line, unavailable = f"{action.done} {dead_letter_id}", 0
            except ApiError as exc:
                if exc.status == 409:  # not pending, or not replayable: a reason, not a fault
                    outcome.skipped.append((dead_letter_id, exc.code, exc.message))
                    line = f"skipped {dead_letter_id}: {exc.code}"
                else:
                    outcome.failed.append((dead_letter_id, str(exc)))
                    line = f"failed {dead_letter_id}: {exc}"
                unavailable = unavailable + 1 if exc.status == 503 else 0
            except Fatal as exc:
                outcome.stopped = str(exc)
                outcome.not_attempted = len(targets) - n
                break
            progress.step(line, outcome.tally(action))
            if unavailable == UNAVAILABLE_STOP:
                outcome.stopped = f"{UNAVAILABLE_STOP} answers of 503 in a row; try again later"
                outcome.not_attempted = len(targets) - n - 1
                break
    except KeyboardInterrupt:
        outcome.stopped = "interrupted (the item in flight may have been done)"
        outcome.not_attempted = (
            len(targets) - len(outcome.done) - len(outcome.skipped) - len(outcome.failed)
        )
    finally:
        progress.close()
    _summary(action, outcome, console)
    if outcome.stopped and outcome.stopped.startswith("interrupted"):
        return INTERRUPTED
    return FAILED if outcome.failed or outcome.stopped else OK


def _summary(action: Action, outcome: Outcome, console: Console) -> None:
    reasons = Counter(code for _, code, _ in outcome.skipped)
    line = f"{action.done} {len(outcome.done)}, skipped {len(outcome.skipped)}"
    if reasons:
        line += " (" + ", ".join(f"{code}: {n}" for code, n in reasons.items()) + ")"
    line += f", failed {len(outcome.failed)}"
    if outcome.not_attempted:
        line += f", not attempted {outcome.not_attempted}"
    console.say(line)
    # Skips that leave a dead letter pending (a revoked key, an omitted value) need a person.
    attention = [
        f"skipped {i}: {code}: {message}"
        for i, code, message in outcome.skipped
        if code not in DONE_ALREADY
    ]
    attention += [f"failed {i}: {why}" for i, why in outcome.failed]
    for text in attention[:MAX_LISTED]:
        console.say(f"  {text}")
    if len(attention) > MAX_LISTED:
        console.say(f"  ... and {len(attention) - MAX_LISTED} more")
    if outcome.stopped:
        console.note(f"stopped: {outcome.stopped}")
