"""The fault injectors count what really happened, and record what did not as missed.

Each test runs one injector of ``benchmarks.faults`` for a few seconds against the real
PostgreSQL and a ``redis-server`` of its own, with a stand-in publisher process (``sleep``)
whose lifetime bounds the injector's windows, and checks the facts it counted. The cases
are the loopholes of the old injectors: a kill with no worker to kill, an injection that
failed, a connection-kill round that found nothing, a forged message aimed at no open row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from benchmarks.faults import injectors
from benchmarks.faults.brokers import OwnRedis
from benchmarks.faults.database import RunDatabase
from benchmarks.faults.injectors import FaultContext
from benchmarks.faults.processes import Child, ProcessGroup
from benchmarks.faults.settings import EVENT_TYPE, RunSpec
from benchmarks.faults.tagging import tagged_engine
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.testing import services

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def publishing_seconds() -> float:
    """How long the stand-in publisher lives: the injectors' windows end with it."""
    return 2.0


@pytest.fixture
def ctx(
    tmp_path: Path, postgres_engine: sa.Engine, unique: str, publishing_seconds: float
) -> Iterator[FaultContext]:
    spec = RunSpec(
        run_id=unique[:8],
        database_url=services.postgres_url(),
        broker="redis",
        broker_address="127.0.0.1:1",
        workdir=str(tmp_path),
        events=100,
        rate=100.0,
    )
    db = RunDatabase(spec)
    db.create()
    broker = OwnRedis(str(tmp_path))
    procs = ProcessGroup(spec)
    sleeper = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({publishing_seconds})"]
    )
    publisher = Child(name="publisher", role="publish", process=sleeper, log=tmp_path / "p.log")
    context = FaultContext(
        spec=spec,
        db=db,
        broker=broker,
        procs=procs,
        publisher=publisher,
        outage_seconds=1.0,
        say=lambda message: None,
        candidate_wait=0.5,
    )
    try:
        yield context
    finally:
        sleeper.kill()
        sleeper.wait()
        procs.close()
        broker.close()
        db.drop()


def _open_rows(ctx: FaultContext, count: int) -> list[int]:
    publisher = Publisher(ctx.db.repository, ctx.spec.routing())
    for n in range(count):
        publisher.publish(PublishRequest(event_type=EVENT_TYPE, payload={"seq": n}))
    return sorted(ctx.db.open_row_ids(count))


def test_a_kill_that_finds_no_running_worker_is_missed_not_skipped(ctx: FaultContext) -> None:
    # Given no worker of the role at all. When the kill injector runs its windows
    injectors.kill_workers("consume", pause=(0.3, 0.5))(ctx)
    # Then no kill is counted, and every window is a missed fault
    assert ctx.facts[injectors.KILLS] == 0
    assert ctx.killed_pids == []
    assert len(ctx.missed) >= 2, ctx.missed
    assert all("no consume worker running" in m for m in ctx.missed)


def test_a_failed_injection_is_missed_and_forged_messages_name_open_rows_only(
    ctx: FaultContext,
) -> None:
    # Given open rows but a broker that is not running
    _open_rows(ctx, 3)
    # When bad messages are injected
    injectors.garbage_and_forged(ctx)
    # Then none is counted as injected, each attempt is a missed fault
    assert sum(n for fact, n in ctx.facts.items() if fact.startswith("injected")) == 0
    assert ctx.missed and all(m.startswith("could not inject") for m in ctx.missed)


@pytest.mark.parametrize("publishing_seconds", [5.0])  # windows for every kind to come up
def test_forged_messages_are_aimed_at_rows_still_open(ctx: FaultContext) -> None:
    # Given three pending rows and the run's own Redis
    open_ids = _open_rows(ctx, 3)
    ctx.broker.start()
    # When bad messages are injected while the publisher lives
    injectors.garbage_and_forged(ctx)
    # Then every message naming a real row names one of the open rows
    client = redis.Redis(host="127.0.0.1", port=ctx.broker.port)
    try:
        entries = client.xrange(ctx.db.route.topic)
    finally:
        client.close()
    aimed = []
    for _id, fields in entries:
        try:
            body = json.loads(fields[b"value"])
        except ValueError:
            continue  # random bytes, truncated: undecodable
        if isinstance(body, dict) and body.get("outbox_id", 10**12) < 10**12:
            aimed.append(body["outbox_id"])
    assert ctx.facts[injectors.injected("forged")] >= 1, ctx.facts
    assert aimed and set(aimed) <= set(open_ids), (aimed, open_ids)
    assert ctx.missed == []
    forged = (
        ctx.facts[injectors.injected("forged")] + ctx.facts[injectors.injected("forged poison")]
    )
    assert ctx.facts[injectors.FORGED_AIMED] == forged


@pytest.mark.parametrize("publishing_seconds", [5.0])  # rounds every 0.5-1.5 s meanwhile
def test_connection_kill_rounds_count_what_they_terminated_and_miss_when_nothing_was(
    ctx: FaultContext,
) -> None:
    # Given one open connection of the run (tagged with its application name)
    engine = tagged_engine(
        ctx.spec.database_url, application_name=ctx.spec.application_name, workdir=None
    )
    held = engine.connect()
    held.execute(sa.text("SELECT 1"))
    try:
        # When the connection killer runs its rounds while the publisher lives
        injectors.terminate_connections(ctx)
    finally:
        held.invalidate()
        held.close()
        engine.dispose()
    # Then the first round terminated it, and each later round while publishing, finding
    # nothing, is a missed fault (the run's publisher always holds a connection)
    assert ctx.facts[injectors.CONNECTIONS_TERMINATED] == 1
    assert ctx.facts[injectors.KILL_ROUNDS] >= 2
    assert ctx.missed and all("found no connection" in m for m in ctx.missed)


def test_a_broker_outage_counts_the_broker_down_back_and_the_rows_it_stranded(
    ctx: FaultContext,
) -> None:
    # Given the run's broker serving and two rows published but not consumed
    ctx.broker.start()
    ids = _open_rows(ctx, 2)
    table = ctx.db.repository.table(ctx.db.route)
    with ctx.db.engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.id.in_(ids)).values(status="published"))
    # When the outage injector stops it and starts it again
    injectors.broker_outage(ctx)
    # Then it saw the broker refuse connections, serve again, and the two stranded rows
    assert ctx.facts[injectors.BROKER_DOWN] == 1
    assert ctx.facts[injectors.BROKER_BACK] == 1
    assert ctx.facts[injectors.STRANDED] == 2
    assert ctx.missed == []
