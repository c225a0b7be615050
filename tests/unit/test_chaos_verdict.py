"""The chaos run's verdict (bench/chaos/verdict.py) and its table: pure functions of what
the client saw and what the back end holds, so each outcome and each doubling is checked
here on hand-made turns; the run itself (`make chaos`) is not part of the suite."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.chaos.audit import Stored, TopicCount
from bench.chaos.faults import Injected, module_of
from bench.chaos.plan import FAULTS, Fault
from bench.chaos.report import table, write_doc
from bench.chaos.traffic import Turn
from bench.chaos.verdict import outcomes, recoveries
from bench.chaos.watchdog import last_error


def _turn(seq: int, due: float, **kw: object) -> Turn:
    t = Turn(seq, f"s{seq}", due, 0, 0, accepted=True, turn_id=f"t{seq}")
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def test_every_accepted_turn_has_one_outcome_and_doubles_are_counted_beside() -> None:
    turns = [
        _turn(0, 0.0, outcome="final", end_s=0.5, finals={"1-0"}),
        _turn(1, 0.1, outcome="error", error_code="llm_unavailable", end_s=1.0),
        _turn(2, 0.2),  # no outcome, stored: stuck
        _turn(3, 0.3),  # no outcome, dead-lettered: stuck
        _turn(4, 0.4),  # no outcome, nowhere: lost
        _turn(5, 0.5, outcome="final", end_s=0.9, finals={"2-0"}),  # a second final in logs
        Turn(6, "s6", 0.6, 1, 0, refused="503 accept_timeout"),
    ]
    store = Stored(
        turns={
            "s0": [("t0", "completed", None, 2)],
            "s1": [("t1", "failed", "llm_unavailable", 0)],
            "s2": [("t2", "completed", None, 2)],
            # a second turn stored for one message of the client's
            "s5": [("t5", "completed", None, 2), ("t5b", "completed", None, 2)],
        },
        dead_lettered={"t3": 1},
    )
    logged = Counter({("assistant.final", "t5"): 2, ("assistant.final", "t0"): 1})
    logged[("error", "t0")] = 1  # an error logged for a turn the client saw answered
    o = outcomes(turns, store, logged)
    assert (o.offered, o.accepted, o.completed) == (7, 6, 2)
    assert o.failed == {"llm_unavailable": 1}
    assert (o.stuck, o.lost) == (["t2", "t3"], ["t4"])
    assert o.completed + sum(o.failed.values()) + len(o.stuck) + len(o.lost) == o.accepted
    assert o.answered_twice == ["t5"]
    assert o.both_outcomes == ["t0"]
    assert o.stored_twice == ["s5"]
    assert o.refused == {"503 accept_timeout": 1}
    assert o.completed_not_stored == 0


def test_recovery_runs_from_the_injection_to_the_last_hurt_turn_of_its_window() -> None:
    kill, storm = FAULTS[0], Fault("storm", "upstream", "error_500")
    faults = [Injected(kill, 10.0, 12.0), Injected(storm, 20.0, 25.0), Injected(kill)]
    faults[2].note = "llm_worker-2 was not running"
    turns = [
        _turn(0, 9.0, outcome="final", end_s=9.5),  # before any fault
        _turn(1, 10.5, outcome="final", end_s=11.0),
        _turn(2, 11.0, outcome="final", end_s=17.0),  # slow: hurt
        _turn(3, 12.0, outcome="final", end_s=12.4),
        _turn(4, 20.5, outcome="error", error_code="llm_unavailable", end_s=21.0),
        _turn(5, 24.0),  # never ended: the window did not recover
        _turn(6, 26.0, outcome="final", end_s=26.3),
    ]
    first, second, missing = recoveries(faults, turns, end_s=30.0)
    assert (first.arrivals, first.hurt, first.down_s) == (3, 1, 2.0)
    assert first.first_ok_s == 1.0 and first.recovered_s == 7.0
    assert (second.arrivals, second.hurt, second.recovered_s) == (3, 2, None)
    assert second.first_ok_s is not None and abs(second.first_ok_s - 6.3) < 1e-9
    assert missing.injected_s is None and missing.note


def test_the_table_and_the_document_block() -> None:
    o = outcomes([_turn(0, 0.0, outcome="final", end_s=0.3, finals={"1-0"})], Stored(), Counter())
    topics = {"ns.turn.requested": TopicCount(3, 2, 1, 1)}
    rows = table(o, topics, [], "ns")
    assert rows[:2] == ["| measure | value |", "|---|---|"]
    assert any("`turn.requested` | 1 extra records of 1 of 2 event ids" in r for r in rows)
    assert any(r.startswith("| **lost**") and "**0**" in r for r in rows)
    assert module_of("llm_worker-2") == "llm_worker" and module_of("ingress") == "ingress"


def test_a_run_replaces_only_its_own_block_of_the_document(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("# Reliability\n\nprose\n")
    write_doc("quick", ["first"], doc)
    write_doc("full", ["full one"], doc)
    write_doc("quick", ["second"], doc)
    text = doc.read_text()
    assert text.startswith("# Reliability\n\nprose\n")
    assert "first" not in text and "second" in text and "full one" in text
    assert text.count("<!-- chaos:quick -->") == 1


def test_a_death_is_told_by_the_exception_its_last_traceback_names(tmp_path: Path) -> None:
    log = tmp_path / "context_worker.log"
    log.write_text(
        '{"level": "ERROR", "msg": "Unable connect to node with id 1"}\n'
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in run\n'
        "gateway_runtime.transactions.TransactionOutcomeUnknown: outcome unknown\n"
        "asyncio.exceptions.CancelledError\n"
    )
    named = "gateway_runtime.transactions.TransactionOutcomeUnknown: outcome unknown"
    assert last_error(log) == named
    log.write_text('{"level": "ERROR", "msg": "broker\\ngone"}\n')
    assert last_error(log) == "broker gone"
