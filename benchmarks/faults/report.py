"""Counting what happened, the verdict, and the printed and JSON reports.

Definitions (every count is per scenario run):

* **published**: events whose publishing transaction committed (the publisher's log);
* **delivered**: handler invocations (the workers' invocation logs), counting those killed
  midway; **duplicates delivered**: invocations beyond the first per event id;
* **applied**: business rows;
* **dead**: rows ``dead``;
* **left pending/published**: rows in those statuses when the run ended;
* **drain s**: seconds from the end of the last fault until every row was final.

**The promises** (:data:`PROMISES`), each a counted fact that must be 0:

* **lost**: non-poisoned published events with no business row whose outbox row is
  ``consumed`` or missing, i.e. gone for good;
* **applied twice**: events with more than one business row;
* **unexpected dead**: dead rows of non-poisoned events;
* **poisoned not dead**: poisoned events whose row is not ``dead`` (a poisoned event that
  ends ``consumed`` broke "only poisoned events dead" as surely as a healthy one dead);
* **foreign effects**: business rows of an event id that was never published, or naming
  another row than the event's own (a forged message applied).

A new promise (the per-key order one, "out of order") is one more :class:`Promise` in
:data:`PROMISES`: a check counting its breaches in a :class:`RunRecord`, with a few samples.

**The faults** are counted facts too (``faults``: kills done, connections terminated, the
broker down and back, rows stranded by it, forged messages aimed at open rows...), some
counted by the injector while it runs (:mod:`benchmarks.faults.injectors`), the others read
here from what the run left behind (handler calls cut by a kill, workers that applied
events, rows the rescue republished, slow handler calls).

The verdict fails a scenario when a promise is broken, when a fault it requires was not
demonstrably done (a fact under the scenario's minimum, or a fault action missed), on not
draining within the bound, and on a publisher that gave up.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.faults import injectors
from benchmarks.faults.database import Effect, OutboxRow
from benchmarks.faults.settings import RunSpec

_SAMPLES = 5


@attrs.frozen(kw_only=True)
class Invocation:
    """One handler call, from a worker's invocation log."""

    event_id: str
    pid: int


@attrs.define(kw_only=True)
class RunRecord:
    """What a run left behind, with the indexes the checks share."""

    published: dict[str, str]
    invocations: list[Invocation]
    rows: list[OutboxRow]
    effects: list[Effect]
    #: Event ids of the events whose handler sleeps long (the slow-handlers scenario).
    slow_events: frozenset[str] = frozenset()
    by_event: dict[str | None, OutboxRow] = attrs.field(init=False)
    effects_of: collections.Counter[str] = attrs.field(init=False)
    poison: set[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.by_event = {r.event_id: r for r in self.rows if r.event_id is not None}
        self.effects_of = collections.Counter(e.event_id for e in self.effects)
        self.poison = {e for e, kind in self.published.items() if kind == "poison"}


@attrs.frozen(kw_only=True)
class Breach:
    """How often a promise was broken in a run, and a few samples of it."""

    count: int
    samples: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Promise:
    """A guarantee the verdict checks: its breaches must count 0."""

    #: Key in ``ScenarioResult.promises`` and the JSON.
    name: str
    #: Column header of the printed table.
    column: str
    #: The problem line: "{count} {what}".
    what: str
    check: Callable[[RunRecord], Breach]


def _lost(run: RunRecord) -> Breach:
    lost = sorted(
        e
        for e in run.published
        if e not in run.poison
        and run.effects_of[e] == 0
        and (e not in run.by_event or run.by_event[e].status == "consumed")
    )
    samples = []
    for e in lost[:_SAMPLES]:
        row = run.by_event.get(e)
        where = f"row {row.id} {row.status}" if row else "no outbox row"
        samples.append(f"lost {e}: {where}, no business row")
    return Breach(count=len(lost), samples=tuple(samples))


def _applied_twice(run: RunRecord) -> Breach:
    twice = sorted(e for e, n in run.effects_of.items() if n > 1)
    samples = []
    for e in twice[:_SAMPLES]:
        pids = sorted({x.pid for x in run.effects if x.event_id == e})
        samples.append(f"applied {run.effects_of[e]}x {e} by pids {pids}")
    return Breach(count=len(twice), samples=tuple(samples))


def _unexpected_dead(run: RunRecord) -> Breach:
    unexpected = [r for r in run.rows if r.status == "dead" and r.event_id not in run.poison]
    reasons = collections.Counter(_reason(r.last_error) for r in unexpected)
    samples = tuple(f"unexpected dead x{n}: {why}" for why, n in reasons.most_common(_SAMPLES))
    return Breach(count=len(unexpected), samples=samples)


def _poisoned_not_dead(run: RunRecord) -> Breach:
    alive = sorted(
        e for e in run.poison if e not in run.by_event or run.by_event[e].status != "dead"
    )
    samples = []
    for e in alive[:_SAMPLES]:
        row = run.by_event.get(e)
        samples.append(f"poisoned {e}: {f'row {row.id} {row.status}' if row else 'no row'}")
    return Breach(count=len(alive), samples=tuple(samples))


def _foreign(run: RunRecord) -> Breach:
    foreign = [
        e
        for e in run.effects
        if e.event_id not in run.published
        or e.event_id not in run.by_event
        or run.by_event[e.event_id].id != e.outbox_id
    ]
    samples = tuple(
        f"foreign effect {e.event_id} on outbox row {e.outbox_id}" for e in foreign[:_SAMPLES]
    )
    return Breach(count=len(foreign), samples=samples)


#: Every promise the verdict checks, in the order of the table's columns.
PROMISES: tuple[Promise, ...] = (
    Promise(name="lost", column="lost", what="events lost", check=_lost),
    Promise(
        name="applied_twice", column="applied 2x", what="events applied twice", check=_applied_twice
    ),
    Promise(
        name="unexpected_dead",
        column="unexp dead",
        what="non-poisoned events dead",
        check=_unexpected_dead,
    ),
    Promise(
        name="poisoned_not_dead",
        column="poison not dead",
        what="poisoned events not dead",
        check=_poisoned_not_dead,
    ),
    Promise(
        name="foreign_effects",
        column="foreign",
        what="effects of forged or mismatched events applied",
        check=_foreign,
    ),
)


#: The fault facts :func:`derived_facts` reads from the run's records (not the injector's).
DERIVED_FACTS = (
    injectors.KILLED_MID_HANDLER,
    injectors.WORKERS_APPLYING,
    injectors.RESCUED,
    injectors.SLOW_CALLS,
)


def derived_facts(run: RunRecord, killed_pids: Iterable[int]) -> dict[str, int]:
    """The fault facts read from what the run left behind (see the module doc)."""
    killed = set(killed_pids)
    applied_by = {(e.event_id, e.pid) for e in run.effects}
    # A poisoned event's call never applies anything: only a healthy event's call counts.
    cut = sum(
        1
        for i in run.invocations
        if i.pid in killed
        and i.event_id not in run.poison
        and (i.event_id, i.pid) not in applied_by
    )
    genuine = [e for e in run.effects if e.event_id in run.published]
    rescued = [r for r in run.rows if r.retry_count > 0 and r.event_id not in run.poison]
    slow = sum(1 for i in run.invocations if i.event_id in run.slow_events)
    return {
        injectors.KILLED_MID_HANDLER: cut,
        injectors.WORKERS_APPLYING: len({e.pid for e in genuine}),
        injectors.RESCUED: len(rescued),
        injectors.SLOW_CALLS: slow,
    }


@attrs.define(kw_only=True)
class ScenarioResult:
    scenario: str
    database: str
    broker: str
    events: int
    published: int = 0
    delivered: int = 0
    duplicates_delivered: int = 0
    applied: int = 0
    dead: int = 0
    poisoned: int = 0
    #: Promise name -> how often it was broken (each must be 0).
    promises: dict[str, int] = attrs.field(factory=dict)
    left_pending: int = 0
    left_published: int = 0
    drained: bool = False
    drain_seconds: float | None = None
    drain_bound: float = 0.0
    publisher_ok: bool = True
    retried_rows: int = 0
    max_retry_count: int = 0
    elapsed: float = 0.0
    #: The faults as counted facts (kills done, connections terminated...).
    faults: dict[str, int] = attrs.field(factory=dict)
    #: What the scenario requires of them: fact -> minimum.
    fault_requirements: dict[str, int] = attrs.field(factory=dict)
    #: Fault actions that should have happened and did not.
    missed_faults: list[str] = attrs.field(factory=list)
    settings: dict[str, object] = attrs.field(factory=dict)
    worker_errors: int = 0
    worker_error_samples: list[str] = attrs.field(factory=list)
    problems: list[str] = attrs.field(factory=list)
    evidence: list[str] = attrs.field(factory=list)
    workdir: str = ""
    crashed: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def combo(self) -> str:
        return f"{self.database}+{self.broker}"

    def broken(self, promise: str) -> int:
        """How often ``promise`` was broken (0 before the run was counted)."""
        return self.promises.get(promise, 0)


def read_published(path: Path) -> dict[str, str]:
    """event id -> ``normal`` or ``poison``, for every committed publish."""
    published: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            event_id, _seq, kind = line.split("\t")
            published[event_id] = kind
    return published


def slow_event_ids(spec: RunSpec, published: Mapping[str, str]) -> set[str]:
    """The published events whose handler sleeps long (ids end in ``-<seq>``)."""
    return {e for e in published if spec.is_slow(int(e.rsplit("-", 1)[1]))}


_INVOCATION_FILE = re.compile(r"invocations-(\d+)\.log$")


def read_invocations(workdir: Path) -> list[Invocation]:
    """Every handler call the workers logged, with the calling process's pid."""
    calls: list[Invocation] = []
    for path in sorted(workdir.glob("invocations-*.log")):
        match = _INVOCATION_FILE.search(path.name)
        pid = int(match.group(1)) if match else 0
        calls.extend(
            Invocation(event_id=line.split("\t", 1)[0], pid=pid)
            for line in path.read_text().splitlines()
            if line
        )
    return calls


def evaluate(
    result: ScenarioResult,
    *,
    published: dict[str, str],
    invocations: Sequence[Invocation],
    rows: Iterable[OutboxRow],
    effects: Iterable[Effect],
    faults: Mapping[str, int] | None = None,
    missed: Sequence[str] = (),
    killed_pids: Iterable[int] = (),
    requires: Iterable[tuple[str, int]] = (),
    slow_events: Iterable[str] = (),
) -> ScenarioResult:
    """Fill in the counts, the fault facts and the problems of ``result`` from what the run
    left behind and what its injector did (``faults``, ``missed``, ``killed_pids``)."""
    run = RunRecord(
        published=dict(published),
        invocations=list(invocations),
        rows=list(rows),
        effects=list(effects),
        slow_events=frozenset(slow_events),
    )
    ids = [i.event_id for i in run.invocations]
    result.published = len(run.published)
    result.delivered = len(ids)
    result.duplicates_delivered = len(ids) - len(set(ids))
    result.applied = len(run.effects)
    result.poisoned = len(run.poison)
    result.dead = sum(1 for r in run.rows if r.status == "dead")
    result.left_pending = sum(1 for r in run.rows if r.status == "pending")
    result.left_published = sum(1 for r in run.rows if r.status == "published")
    retried = [r for r in run.rows if r.retry_count > 0 and r.event_id not in run.poison]
    result.retried_rows = len(retried)
    result.max_retry_count = max((r.retry_count for r in run.rows), default=0)
    result.fault_requirements = dict(requires)
    derived = {
        fact: n
        for fact, n in derived_facts(run, killed_pids).items()
        if n or fact in result.fault_requirements
    }
    result.faults = {**(faults or {}), **derived}
    result.missed_faults = list(missed)
    breaches = {p.name: p.check(run) for p in PROMISES}
    result.promises = {name: b.count for name, b in breaches.items()}
    _judge(result, breaches)
    stuck = [r for r in run.rows if r.status in ("pending", "published") and r.last_error]
    for reason, n in collections.Counter(_reason(r.last_error) for r in stuck).most_common(3):
        result.evidence.append(f"left {n} open rows whose last error is: {reason}")
    return result


def _judge(result: ScenarioResult, breaches: Mapping[str, Breach]) -> None:
    """The problems that fail the scenario, each with a few samples as evidence."""
    problems, evidence = result.problems, result.evidence
    if result.crashed:
        problems.append(f"the run crashed: {result.crashed}")
    if not result.publisher_ok or result.published < result.events:
        problems.append(f"publisher confirmed only {result.published} of {result.events} events")
    for promise in PROMISES:
        breach = breaches[promise.name]
        if breach.count:
            problems.append(f"{breach.count} {promise.what}")
            evidence.extend(breach.samples)
    for fact, minimum in result.fault_requirements.items():
        done = result.faults.get(fact, 0)
        if done < minimum:
            problems.append(
                f"fault not demonstrated: {fact} = {done}, the scenario needs >= {minimum}"
            )
    if result.missed_faults:
        problems.append(f"{len(result.missed_faults)} fault actions missed")
        evidence.extend(f"missed: {m}" for m in result.missed_faults[:_SAMPLES])
    if not result.drained:
        problems.append(
            f"did not drain within {result.drain_bound:.0f} s after the last fault "
            f"({result.left_pending} pending, {result.left_published} published left)"
        )


def _reason(error: str | None) -> str:
    text = (error or "(no last_error)").replace("\n", " ")
    return text[:140]


# ------------------------------------------------------------------------------ output


def _fault_summary(result: ScenarioResult) -> str:
    """Each required fact as ``done/minimum`` (``!`` marks one short), and missed actions."""
    parts = [
        f"{result.faults.get(f, 0)}/{m}{'!' if result.faults.get(f, 0) < m else ''}"
        for f, m in result.fault_requirements.items()
    ]
    if result.missed_faults:
        parts.append(f"{len(result.missed_faults)} missed")
    return " ".join(parts) or "-"


def _columns() -> list[tuple[str, Callable[[ScenarioResult], object]]]:
    """The table's columns; one per promise of :data:`PROMISES` (read at call time)."""
    return [
        ("scenario", lambda r: r.scenario),
        ("db+broker", lambda r: r.combo),
        ("published", lambda r: r.published),
        ("delivered", lambda r: r.delivered),
        ("dup deliv", lambda r: r.duplicates_delivered),
        ("applied", lambda r: r.applied),
        ("dead (poison)", lambda r: f"{r.dead} ({r.poisoned})"),
        *((p.column, lambda r, name=p.name: r.broken(name)) for p in PROMISES),
        ("left pend/pub", lambda r: f"{r.left_pending}/{r.left_published}"),
        ("drain s", lambda r: "-" if r.drain_seconds is None else f"{r.drain_seconds:.1f}"),
        ("faults", _fault_summary),
        ("verdict", lambda r: "PASS" if r.passed else "FAIL"),
    ]


def table(results: Sequence[ScenarioResult]) -> str:
    columns = _columns()
    rows = [[h for h, _ in columns]] + [[str(f(r)) for _, f in columns] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def details(result: ScenarioResult) -> str:
    lines = [f"{result.scenario} on {result.combo}: {'PASS' if result.passed else 'FAIL'}"]
    lines.append(
        f"  elapsed {result.elapsed:.0f} s; rows retried {result.retried_rows} "
        f"(max retry_count {result.max_retry_count})"
    )
    for fact, count in result.faults.items():
        need = result.fault_requirements.get(fact)
        mark = "" if need is None else f" (needs >= {need}{', SHORT' if count < need else ''})"
        lines.append(f"  fault: {fact} = {count}{mark}")
    for fact, need in result.fault_requirements.items():
        if fact not in result.faults:
            lines.append(f"  fault: {fact} = 0 (needs >= {need}, SHORT)")
    lines.extend(f"  problem: {p}" for p in result.problems)
    lines.extend(f"  evidence: {e}" for e in result.evidence)
    if result.worker_errors:
        lines.append(f"  worker log ERROR lines: {result.worker_errors}, e.g.:")
        lines.extend(f"    {s}" for s in result.worker_error_samples)
    if not result.passed and result.workdir:
        lines.append(f"  logs kept in {result.workdir}")
    return "\n".join(lines)


def to_json(results: Sequence[ScenarioResult], meta: dict[str, Any]) -> str:
    payload = {
        **meta,
        "passed": all(r.passed for r in results),
        "scenarios": [{**attrs.asdict(r), "passed": r.passed} for r in results],
    }
    return json.dumps(payload, indent=2, default=str)
