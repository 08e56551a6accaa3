"""Counting what happened, the verdict, and the printed and JSON reports.

Definitions (every count is per scenario run):

* **published**: events whose publishing transaction committed (the publisher's log);
* **delivered**: handler invocations (the workers' invocation logs), counting those killed
  midway; **duplicates delivered**: invocations beyond the first per event id;
* **applied**: business rows; **applied twice**: events with more than one business row;
* **lost**: non-poisoned published events with no business row whose outbox row is
  ``consumed`` or missing, i.e. gone for good;
* **dead**: rows ``dead``; **unexpected dead**: dead rows of non-poisoned events;
* **foreign effects**: business rows of an event id that was never published, or naming
  another row than the event's own (a forged message applied);
* **left pending/published**: rows in those statuses when the run ended;
* **drain s**: seconds from the end of the last fault until every row was final.

The verdict fails a scenario on lost, applied twice, unexpected dead or foreign effects
above 0, on not draining within the bound, and on a publisher that gave up.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.faults.database import Effect, OutboxRow

_SAMPLES = 5


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
    applied_twice: int = 0
    lost: int = 0
    dead: int = 0
    poisoned: int = 0
    unexpected_dead: int = 0
    foreign_effects: int = 0
    left_pending: int = 0
    left_published: int = 0
    drained: bool = False
    drain_seconds: float | None = None
    drain_bound: float = 0.0
    publisher_ok: bool = True
    retried_rows: int = 0
    max_retry_count: int = 0
    elapsed: float = 0.0
    faults: dict[str, object] = attrs.field(factory=dict)
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


def read_published(path: Path) -> dict[str, str]:
    """event id -> ``normal`` or ``poison``, for every committed publish."""
    published: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            event_id, _seq, kind = line.split("\t")
            published[event_id] = kind
    return published


def read_invocations(workdir: Path) -> list[str]:
    ids = []
    for path in sorted(workdir.glob("invocations-*.log")):
        ids.extend(line.split("\t", 1)[0] for line in path.read_text().splitlines() if line)
    return ids


def evaluate(
    result: ScenarioResult,
    *,
    published: dict[str, str],
    invocations: Sequence[str],
    rows: Iterable[OutboxRow],
    effects: Iterable[Effect],
) -> ScenarioResult:
    """Fill in the counts and the problems of ``result`` from what the run left behind."""
    rows = list(rows)
    effects = list(effects)
    by_event = {r.event_id: r for r in rows if r.event_id is not None}
    effects_of = collections.Counter(e.event_id for e in effects)
    result.published = len(published)
    result.delivered = len(invocations)
    result.duplicates_delivered = len(invocations) - len(set(invocations))
    result.applied = len(effects)
    twice = sorted(e for e, n in effects_of.items() if n > 1)
    result.applied_twice = len(twice)
    poison = {e for e, kind in published.items() if kind == "poison"}
    result.poisoned = len(poison)
    lost = sorted(
        e
        for e in published
        if e not in poison
        and effects_of[e] == 0
        and (e not in by_event or by_event[e].status == "consumed")
    )
    result.lost = len(lost)
    dead = [r for r in rows if r.status == "dead"]
    result.dead = len(dead)
    unexpected = [r for r in dead if r.event_id not in poison]
    result.unexpected_dead = len(unexpected)
    foreign = [
        e
        for e in effects
        if e.event_id not in published
        or e.event_id not in by_event
        or by_event[e.event_id].id != e.outbox_id
    ]
    result.foreign_effects = len(foreign)
    result.left_pending = sum(1 for r in rows if r.status == "pending")
    result.left_published = sum(1 for r in rows if r.status == "published")
    retried = [r for r in rows if r.retry_count > 0 and r.event_id not in poison]
    result.retried_rows = len(retried)
    result.max_retry_count = max((r.retry_count for r in rows), default=0)
    _judge(
        result,
        by_event=by_event,
        effects=effects,
        lost=lost,
        twice=twice,
        unexpected=unexpected,
        foreign=foreign,
    )
    stuck = [r for r in rows if r.status in ("pending", "published") and r.last_error]
    for reason, n in collections.Counter(_reason(r.last_error) for r in stuck).most_common(3):
        result.evidence.append(f"left {n} open rows whose last error is: {reason}")
    not_final = [r for r in rows if r.event_id in poison and r.status != "dead"]
    if not_final:
        statuses = dict(collections.Counter(r.status for r in not_final))
        result.evidence.append(f"{len(not_final)} poisoned rows not dead: {statuses}")
    return result


def _judge(
    result: ScenarioResult,
    *,
    by_event: dict[str | None, OutboxRow],
    effects: list[Effect],
    lost: list[str],
    twice: list[str],
    unexpected: list[OutboxRow],
    foreign: list[Effect],
) -> None:
    """The problems that fail the scenario, each with a few samples as evidence."""
    effects_of = collections.Counter(e.event_id for e in effects)
    problems, evidence = result.problems, result.evidence
    if result.crashed:
        problems.append(f"the run crashed: {result.crashed}")
    if not result.publisher_ok or result.published < result.events:
        problems.append(f"publisher confirmed only {result.published} of {result.events} events")
    if result.lost:
        problems.append(f"{result.lost} events lost")
        for e in lost[:_SAMPLES]:
            row = by_event.get(e)
            where = f"row {row.id} {row.status}" if row else "no outbox row"
            evidence.append(f"lost {e}: {where}, no business row")
    if result.applied_twice:
        problems.append(f"{result.applied_twice} events applied twice")
        for e in twice[:_SAMPLES]:
            pids = sorted({x.pid for x in effects if x.event_id == e})
            evidence.append(f"applied {effects_of[e]}x {e} by pids {pids}")
    if result.unexpected_dead:
        problems.append(f"{result.unexpected_dead} non-poisoned events dead")
        reasons = collections.Counter(_reason(r.last_error) for r in unexpected)
        for reason, n in reasons.most_common(_SAMPLES):
            evidence.append(f"unexpected dead x{n}: {reason}")
    if result.foreign_effects:
        problems.append(f"{result.foreign_effects} effects of forged or mismatched events applied")
        for e in foreign[:_SAMPLES]:
            evidence.append(f"foreign effect {e.event_id} on outbox row {e.outbox_id}")
    if not result.drained:
        problems.append(
            f"did not drain within {result.drain_bound:.0f} s after the last fault "
            f"({result.left_pending} pending, {result.left_published} published left)"
        )


def _reason(error: str | None) -> str:
    text = (error or "(no last_error)").replace("\n", " ")
    return text[:140]


# ------------------------------------------------------------------------------ output

_COLUMNS = (
    ("scenario", lambda r: r.scenario),
    ("db+broker", lambda r: r.combo),
    ("published", lambda r: r.published),
    ("delivered", lambda r: r.delivered),
    ("dup deliv", lambda r: r.duplicates_delivered),
    ("applied", lambda r: r.applied),
    ("applied 2x", lambda r: r.applied_twice),
    ("lost", lambda r: r.lost),
    ("dead (poison/unexp)", lambda r: f"{r.dead} ({r.poisoned}/{r.unexpected_dead})"),
    ("foreign", lambda r: r.foreign_effects),
    ("left pend/pub", lambda r: f"{r.left_pending}/{r.left_published}"),
    ("drain s", lambda r: "-" if r.drain_seconds is None else f"{r.drain_seconds:.1f}"),
    ("verdict", lambda r: "PASS" if r.passed else "FAIL"),
)


def table(results: Sequence[ScenarioResult]) -> str:
    rows = [[h for h, _ in _COLUMNS]] + [[str(f(r)) for _, f in _COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def details(result: ScenarioResult) -> str:
    lines = [f"{result.scenario} on {result.combo}: {'PASS' if result.passed else 'FAIL'}"]
    lines.append(
        f"  faults: {_fmt(result.faults) or 'none'}; elapsed {result.elapsed:.0f} s; "
        f"rows retried {result.retried_rows} (max retry_count {result.max_retry_count})"
    )
    lines.extend(f"  problem: {p}" for p in result.problems)
    lines.extend(f"  evidence: {e}" for e in result.evidence)
    if result.worker_errors:
        lines.append(f"  worker log ERROR lines: {result.worker_errors}, e.g.:")
        lines.extend(f"    {s}" for s in result.worker_error_samples)
    if not result.passed and result.workdir:
        lines.append(f"  logs kept in {result.workdir}")
    return "\n".join(lines)


def _fmt(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def to_json(results: Sequence[ScenarioResult], meta: dict[str, Any]) -> str:
    payload = {
        **meta,
        "passed": all(r.passed for r in results),
        "scenarios": [{**attrs.asdict(r), "passed": r.passed} for r in results],
    }
    return json.dumps(payload, indent=2, default=str)
