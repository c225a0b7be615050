"""From what the client saw and what the back end holds to the chaos table's numbers.

Every accepted turn gets exactly one outcome, so the four add up to the accepted turns:
- completed: the client got its `assistant.final`;
- failed: the client got an `error` event with a code (actionable: it says what failed
  and whether to retry);
- stuck: the client got neither within the follow time, but the back end finished the
  turn (stored, or in the dead-letter index): the client was left waiting;
- lost: neither, and the turn is nowhere: not stored, not dead-lettered.
Doubles are counted beside them: a turn answered twice (more than one `assistant.final`,
live or in the session's logs), a turn told both outcomes (an `assistant.final` and an
`error`), a session stored twice (more than one stored turn for the client's one
message, or a turn with more than its two messages).

A fault's recovery is read from the turns that arrived in its window (from its injection
to the next fault's): `first ok` is how long after the injection the first of them
completed; `recovered` how long after the injection the last of them that failed or
was slow (SLOW_S or more) ended, i.e. from when on the clients saw normal service again
(0 when none was hurt).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.chaos.audit import Stored
from bench.chaos.faults import Injected
from bench.chaos.traffic import Turn

SLOW_S = 5.0  # a turn that took this long from arrival to its end is hurt by the fault


@dataclass
class Outcomes:
    offered: int
    accepted: int
    refused: dict[str, int]  # reason -> arrivals no ingress accepted
    completed: int
    failed: dict[str, int]  # error code -> turns
    stuck: list[str]  # turn ids
    lost: list[str]
    answered_twice: list[str]
    both_outcomes: list[str]  # a final and an error for one turn
    stored_twice: list[str]  # session ids
    wrong_answers: int  # finals whose text is not the upstream's whole answer
    completed_not_stored: int
    retried_posts: int  # accepted after more than one POST
    reconnects: int  # SSE streams opened again
    turn_s: dict[str, float]  # completed turns, arrival to final: p50, p99, max
    in_logs: int  # completed turns whose final the session logs hold (the audit's reach)


def outcomes(turns: Sequence[Turn], store: Stored, logged: Counter[tuple[str, str]]) -> Outcomes:
    """`logged`: (event type, turn id) -> turn-ending events in the session logs."""
    accepted = [t for t in turns if t.accepted and t.turn_id]
    stored_ids = store.turn_ids()
    failed: Counter[str] = Counter()
    stuck: list[str] = []
    lost: list[str] = []
    for t in accepted:
        if t.outcome == "error":
            failed[t.error_code or "(no code)"] += 1
        elif t.outcome != "final":
            assert t.turn_id is not None
            ended = t.turn_id in stored_ids or t.turn_id in store.dead_lettered
            (stuck if ended else lost).append(t.turn_id)
    finals = {t.turn_id: max(len(t.finals), logged[("assistant.final", t.turn_id or "")])
              for t in accepted}  # fmt: skip
    errors = {t.turn_id: max(t.outcome == "error", logged[("error", t.turn_id or "")])
              for t in accepted}  # fmt: skip
    twice = [t for t, n in finals.items() if t and n > 1]
    both = [t for t, n in finals.items() if t and n > 0 and errors[t] > 0]
    stored_twice = [
        session
        for session, rows in store.turns.items()
        if len(rows) > 1 or any(messages > 2 for *_, messages in rows)
    ]
    return Outcomes(
        offered=len(turns),
        accepted=len(accepted),
        refused=dict(Counter(t.refused or "?" for t in turns if not t.accepted)),
        completed=sum(1 for t in accepted if t.outcome == "final"),
        failed=dict(failed),
        stuck=stuck,
        lost=lost,
        answered_twice=twice,
        both_outcomes=both,
        stored_twice=sorted(stored_twice),
        wrong_answers=sum(1 for t in accepted if t.outcome == "final" and t.wrong_answer),
        completed_not_stored=sum(
            1 for t in accepted if t.outcome == "final" and t.turn_id not in stored_ids
        ),
        retried_posts=sum(1 for t in accepted if t.post_attempts > 1),
        reconnects=sum(t.reconnects for t in turns),
        in_logs=sum(
            1
            for t in accepted
            if t.outcome == "final" and logged[("assistant.final", t.turn_id or "")] > 0
        ),
        turn_s=_spread(
            [t.end_s - t.due_s for t in accepted if t.outcome == "final" and t.end_s is not None]
        ),
    )


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {"p50": s[len(s) // 2], "p99": s[min(len(s) - 1, len(s) * 99 // 100)], "max": s[-1]}


def baseline(turns: Sequence[Turn], faults: Sequence[Injected]) -> dict[str, float]:
    """Arrivals before the first fault, and their turn times: what normal is on this
    machine at this moment (a loaded machine's normal is slower)."""
    first = min((f.injected_s for f in faults if f.injected_s is not None), default=math.inf)
    before = [t for t in turns if t.due_s < first]
    done = [t.end_s - t.due_s for t in before if t.outcome == "final" and t.end_s is not None]
    return {"arrivals": len(before), "completed": len(done), **_spread(done)}


@dataclass
class Recovery:
    fault: str
    injected_s: float | None
    down_s: float | None  # injection to heal (the process or server back)
    arrivals: int  # turns that arrived in the window
    hurt: int  # of them: not accepted, failed, slow, or never ended
    first_ok_s: float | None
    recovered_s: float | None  # None: the window ended with hurt turns
    note: str


def _hurt(t: Turn) -> bool:
    if not t.accepted or t.outcome != "final" or t.end_s is None:
        return True
    return t.end_s - t.due_s >= SLOW_S


def recoveries(faults: Sequence[Injected], turns: Sequence[Turn], end_s: float) -> list[Recovery]:
    """One row per fault, over the arrivals from its injection to the next one's."""
    starts = [f.injected_s for f in faults]
    rows = []
    for i, f in enumerate(faults):
        begin = f.injected_s
        if begin is None:
            rows.append(Recovery(f.fault.name, None, None, 0, 0, None, None, f.note))
            continue
        later = [s for s in starts[i + 1 :] if s is not None]
        until = later[0] if later else end_s
        window = [t for t in turns if begin <= t.due_s < until]
        ok_ends = [t.end_s for t in window if not _hurt(t) and t.end_s is not None]
        hurt = [t for t in window if _hurt(t)]
        never = any(t.end_s is None for t in hurt)
        recovered = None if never else max((t.end_s or 0) - begin for t in hurt) if hurt else 0.0
        rows.append(
            Recovery(
                fault=f.fault.name,
                injected_s=begin,
                down_s=None if f.healed_s is None else f.healed_s - begin,
                arrivals=len(window),
                hurt=len(hurt),
                first_ok_s=min(ok_ends) - begin if ok_ends else None,
                recovered_s=recovered,
                note=f.note,
            )
        )
    return rows
