"""Running scenarios: set up the run's services, processes and tables, inject, drain, count,
and always clean up (processes ended, own broker stopped, tables dropped)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from benchmarks.faults import report, settings
from benchmarks.faults.brokers import OwnBroker, own_broker
from benchmarks.faults.database import RunDatabase
from benchmarks.faults.injectors import FaultContext
from benchmarks.faults.processes import ProcessGroup
from benchmarks.faults.publisher import published_log
from benchmarks.faults.report import ScenarioResult
from benchmarks.faults.scenarios import Scenario

#: How long a worker may take to print that it runs.
WORKER_START_TIMEOUT = 30.0


@attrs.frozen(kw_only=True)
class RunSettings:
    """What the command line chose."""

    events: int = 1000
    rate: float = 100.0
    outage_seconds: float = 30.0
    #: A scenario fails unless every row is final this long after its last fault.
    drain_timeout: float = 120.0
    keep: bool = False
    #: How many events of a slow-handlers scenario sleep (None: the scenario's own count).
    slow_events: int | None = None
    database_urls: dict[str, str] = attrs.field(factory=lambda: dict(settings.DEFAULT_URLS))


def _say(prefix: str) -> Callable[[str], None]:
    started = time.monotonic()

    def say(message: str) -> None:
        print(
            f"[{time.monotonic() - started:6.1f}s {prefix}] {message}", file=sys.stderr, flush=True
        )

    return say


def _wait_workers_up(procs: ProcessGroup) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    for child in procs.workers():
        while not child.running:
            if not child.alive:
                raise RuntimeError(f"{child.name} exited at start: {child.log.read_text()[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not start within {WORKER_START_TIMEOUT} s")
            time.sleep(0.1)


def _drain(db: RunDatabase, expected: int, deadline: float) -> float | None:
    """Wait until every expected row is final; return when, or ``None`` at the deadline."""
    while time.monotonic() < deadline:
        counts = db.counts()
        total = sum(counts.values())
        if total >= expected and counts["pending"] == 0 and counts["published"] == 0:
            return time.monotonic()
        time.sleep(0.5)
    return None


@contextlib.contextmanager
def _broker(kind: str, workdir: str) -> Iterator[OwnBroker]:
    broker = own_broker(kind, workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def run_scenario(
    scenario: Scenario, database: str, broker_kind: str, run: RunSettings
) -> ScenarioResult:
    """Run one scenario on one database and broker; never raises for a failed run."""
    run_id = uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix=f"okfaults-{scenario.name}-{run_id}-")
    say = _say(f"{scenario.name} {database}+{broker_kind}")
    slow_events = scenario.slow_events if run.slow_events is None else run.slow_events
    slow_every = max(1, run.events // slow_events) if scenario.slow_events and slow_events else 0
    result = ScenarioResult(
        scenario=scenario.name,
        database=database,
        broker=broker_kind,
        events=run.events,
        drain_bound=run.drain_timeout + scenario.extra_drain,
        workdir=workdir,
        settings={
            "rate": run.rate,
            "republish_after": settings.REPUBLISH_AFTER,
            "republish_interval": settings.REPUBLISH_INTERVAL,
            "claim_idle_seconds": settings.CLAIM_IDLE_SECONDS if broker_kind == "redis" else None,
            "lease_seconds": settings.LEASE_SECONDS,
            "workers": list(scenario.workers),
        },
    )
    started = time.monotonic()
    say(f"{scenario.description}; {run.events} events at {run.rate:g}/s; work dir {workdir}")
    try:
        with _broker(broker_kind, workdir) as broker:
            spec = settings.RunSpec(
                run_id=run_id,
                database_url=run.database_urls[database],
                broker=broker_kind,
                broker_address=broker.address,
                workdir=workdir,
                handler_sleep=scenario.handler_sleep,
                sleep_every=settings.sleep_every(run.events),
                events=run.events,
                rate=run.rate,
                slow_every=slow_every,
                slow_seconds=scenario.slow_seconds,
            )
            db = RunDatabase(spec)
            db.create()
            procs = ProcessGroup(spec)
            try:
                _execute(
                    scenario,
                    run,
                    spec=spec,
                    db=db,
                    broker=broker,
                    procs=procs,
                    result=result,
                    say=say,
                )
            finally:
                forced = procs.close()
                if forced:
                    say(f"had to SIGKILL {forced} at the end")
                result.worker_errors, result.worker_error_samples = procs.error_lines()
                if not run.keep:
                    db.drop()
    except Exception as exc:
        result.crashed = f"{type(exc).__name__}: {exc}"
        say(f"crashed: {result.crashed}")
        if not result.problems:
            result.problems.append(f"the run crashed: {result.crashed}")
    result.elapsed = time.monotonic() - started
    broken = ", ".join(f"{name} {n}" for name, n in result.promises.items())
    say(
        f"{'PASS' if result.passed else 'FAIL'}: published {result.published}, "
        f"applied {result.applied}, dead {result.dead}; {broken}; faults {result.faults}"
    )
    if result.passed and not run.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _execute(
    scenario: Scenario,
    run: RunSettings,
    *,
    spec: settings.RunSpec,
    db: RunDatabase,
    broker: OwnBroker,
    procs: ProcessGroup,
    result: ScenarioResult,
    say: Callable[[str], None],
) -> None:
    for role in scenario.workers:
        procs.start_worker(role)
    _wait_workers_up(procs)
    publisher = procs.start_publisher()
    ctx = FaultContext(
        spec=spec,
        db=db,
        broker=broker,
        procs=procs,
        publisher=publisher,
        outage_seconds=run.outage_seconds,
        say=say,
    )
    scenario.inject(ctx)
    publisher.process.wait(timeout=run.events / run.rate + 300)
    # No fault at all: drain time counts from the end of publishing.
    last_fault = ctx.last_fault or time.monotonic()
    result.publisher_ok = publisher.process.returncode == 0
    published = report.read_published(published_log(spec.workdir))
    say(f"faults over, publisher exited {publisher.process.returncode}; draining")
    drained_at = _drain(db, len(published), last_fault + result.drain_bound)
    result.drained = drained_at is not None
    result.drain_seconds = None if drained_at is None else max(0.0, drained_at - last_fault)
    time.sleep(1.0)  # let in-flight duplicates (if any) land before counting
    procs.close()
    report.evaluate(
        result,
        published=published,
        invocations=report.read_invocations(Path(spec.workdir)),
        rows=db.outbox_rows(),
        effects=db.effects_rows(),
        faults=dict(ctx.facts),
        missed=ctx.missed,
        killed_pids=ctx.killed_pids,
        requires=scenario.requires,
        slow_events=report.slow_event_ids(spec, published),
    )
