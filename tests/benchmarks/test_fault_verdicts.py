"""The fault suite's verdict: a scenario passes only when its fault demonstrably happened and
every promise held.

These tests feed :func:`benchmarks.faults.report.evaluate` what a run leaves behind (the
publisher's log, the handlers' invocations, the outbox rows, the business rows) and what
its injector counted, and check the verdict. No service is needed: the verdict is a pure
function of those facts. That the injectors count what really happened is checked against
real processes in ``test_fault_injectors.py`` and ``test_faults.py``.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.faults import injectors, report
from benchmarks.faults.database import Effect, OutboxRow
from benchmarks.faults.report import Breach, Invocation, Promise, ScenarioResult
from benchmarks.faults.scenarios import SCENARIOS, Scenario

EVENTS = 6
POISON = "run-3"


def _run(
    *,
    statuses: dict[str, str] | None = None,
    effects: list[Effect] | None = None,
    invocations: list[Invocation] | None = None,
) -> dict[str, object]:
    """A clean run of 6 events (``run-3`` poisoned), every promise kept, unless overridden."""
    published = {f"run-{n}": "poison" if f"run-{n}" == POISON else "normal" for n in range(EVENTS)}
    status = {e: "dead" if e == POISON else "consumed" for e in published}
    status.update(statuses or {})
    rows = [
        OutboxRow(id=n + 1, event_id=e, status=s, retry_count=0, last_error=None)
        for n, (e, s) in enumerate(status.items())
    ]
    if effects is None:
        effects = [
            Effect(event_id=r.event_id or "", outbox_id=r.id, pid=100)
            for r in rows
            if r.event_id != POISON
        ]
    if invocations is None:
        invocations = [Invocation(event_id=e, pid=100) for e in published]
    return {"published": published, "invocations": invocations, "rows": rows, "effects": effects}


def _result(**fields: object) -> ScenarioResult:
    values: dict[str, object] = {
        "scenario": "s",
        "database": "pg",
        "broker": "redis",
        "events": EVENTS,
        "drained": True,
    }
    values.update(fields)
    return ScenarioResult(**values)  # type: ignore[arg-type]


def _enough(scenario: Scenario) -> dict[str, int]:
    return {fact: minimum for fact, minimum in scenario.requires}


def test_a_clean_run_with_its_fault_done_passes() -> None:
    result = report.evaluate(
        _result(), **_run(), faults={injectors.KILLS: 2}, requires=((injectors.KILLS, 1),)
    )
    assert result.passed, result.problems
    assert result.promises == {p.name: 0 for p in report.PROMISES}


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS], ids=lambda s: s.name)
def test_every_scenario_requires_its_fault_and_fails_without_it(scenario: Scenario) -> None:
    # Given a run in which every promise held
    assert scenario.requires, f"{scenario.name} names no fact proving its fault"
    # When its injector did nothing (no fact counted)
    idle = report.evaluate(_result(), **_run(), requires=scenario.requires)
    # Then the verdict fails, naming each missing fact
    assert not idle.passed
    for fact, _minimum in scenario.requires:
        assert any(f"fault not demonstrated: {fact} = " in p for p in idle.problems), idle.problems
    # And passes once the injector counted every required fact at its minimum (facts read
    # from the run's records are tested below and in test_faults.py)
    if not set(report.DERIVED_FACTS) & set(_enough(scenario)):
        done = report.evaluate(
            _result(), **_run(), faults=_enough(scenario), requires=scenario.requires
        )
        assert done.passed, done.problems


def test_a_fact_below_its_minimum_fails_even_when_some_fault_happened() -> None:
    result = report.evaluate(
        _result(),
        **_run(),
        faults={injectors.KILL_ROUNDS: 4, injectors.CONNECTIONS_TERMINATED: 0},
        requires=((injectors.KILL_ROUNDS, 1), (injectors.CONNECTIONS_TERMINATED, 1)),
    )
    assert not result.passed
    assert result.problems == [
        "fault not demonstrated: connections terminated = 0, the scenario needs >= 1"
    ]


def test_a_missed_fault_action_fails_the_run() -> None:
    result = report.evaluate(
        _result(),
        **_run(),
        faults={injectors.KILLS: 3},
        missed=["kill 2: no consume worker running within 30 s"],
        requires=((injectors.KILLS, 1),),
    )
    assert not result.passed
    assert result.problems == ["1 fault actions missed"]
    assert "missed: kill 2: no consume worker running within 30 s" in result.evidence


def test_a_poisoned_event_that_ends_consumed_is_a_broken_promise() -> None:
    # Given the poisoned event's row consumed (no business row: the handler raised)
    result = report.evaluate(_result(), **_run(statuses={POISON: "consumed"}))
    assert not result.passed
    assert result.promises["poisoned_not_dead"] == 1
    assert "1 poisoned events not dead" in result.problems


def test_each_promise_fails_the_run_when_broken() -> None:
    base = _run()
    effects = list(base["effects"])  # type: ignore[call-overload]
    cases = {
        "lost": _run(effects=[e for e in effects if e.event_id != "run-1"]),
        "applied_twice": _run(effects=[*effects, Effect(event_id="run-1", outbox_id=2, pid=101)]),
        "unexpected_dead": _run(
            statuses={"run-1": "dead"}, effects=[e for e in effects if e.event_id != "run-1"]
        ),
        "foreign_effects": _run(
            effects=[*effects, Effect(event_id="forged-1", outbox_id=2, pid=1)]
        ),
    }
    for promise, run in cases.items():
        result = report.evaluate(_result(), **run)  # type: ignore[arg-type]
        assert result.promises[promise] == 1, (promise, result.promises)
        assert not result.passed, promise


def test_handler_calls_cut_by_a_kill_are_counted_from_the_invocation_logs() -> None:
    # Given pid 200 was killed: it called run-1 and run-2 (rolled back), pid 100 applied them
    calls = [Invocation(event_id=f"run-{n}", pid=100) for n in range(EVENTS)]
    calls += [Invocation(event_id="run-1", pid=200), Invocation(event_id="run-2", pid=200)]
    result = report.evaluate(
        _result(),
        **_run(invocations=calls),
        killed_pids=[200],
        requires=((injectors.KILLED_MID_HANDLER, 1),),
    )
    assert result.faults[injectors.KILLED_MID_HANDLER] == 2
    assert result.passed, result.problems
    # And a kill that cut no handler call (pid 100 applied what it called) does not count
    quiet = report.evaluate(
        _result(), **_run(), killed_pids=[100], requires=((injectors.KILLED_MID_HANDLER, 1),)
    )
    assert not quiet.passed


def test_a_new_promise_is_one_more_counted_fact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a promise the ordering work would add, broken once in this run
    out_of_order = Promise(
        name="out_of_order",
        column="out of order",
        what="events applied out of their key's order",
        check=lambda run: Breach(count=1, samples=("k7: seq 5 applied before seq 4",)),
    )
    monkeypatch.setattr(report, "PROMISES", (*report.PROMISES, out_of_order))
    # Then the verdict fails on it, and the table and JSON show it as a counted fact
    result = report.evaluate(_result(), **_run())
    assert not result.passed
    assert "1 events applied out of their key's order" in result.problems
    assert "k7: seq 5 applied before seq 4" in result.evidence
    assert "out of order" in report.table([result]).splitlines()[0]
    assert json.loads(report.to_json([result], {}))["scenarios"][0]["promises"]["out_of_order"] == 1


def test_the_report_shows_the_faults_as_counted_facts() -> None:
    result = report.evaluate(
        _result(scenario="db-terminate"),
        **_run(),
        faults={injectors.KILL_ROUNDS: 7, injectors.CONNECTIONS_TERMINATED: 0},
        requires=((injectors.KILL_ROUNDS, 1), (injectors.CONNECTIONS_TERMINATED, 1)),
    )
    text = report.details(result)
    assert "fault: connection-kill rounds = 7 (needs >= 1)" in text
    assert "fault: connections terminated = 0 (needs >= 1, SHORT)" in text
    assert "7/1 0/1!" in report.table([result])
    document = json.loads(report.to_json([result], {}))["scenarios"][0]
    assert document["faults"]["connection-kill rounds"] == 7
    assert document["faults"]["connections terminated"] == 0
    assert document["passed"] is False


def test_a_forged_message_never_aims_at_a_made_up_row() -> None:
    # The old injector aimed at row 1 when no row was open: probably consumed long ago
    for kind in injectors.AIMED_KINDS:
        with pytest.raises(ValueError, match="needs an open row"):
            injectors.bad_message(kind, None, 0, target=None)  # type: ignore[arg-type]
