"""The admin API behind the operator commands: retention, the housekeeping thread that one
worker at a time runs, and the CLI's logging and table fallbacks."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.admin import (
    DeadLetters,
    RetentionPolicy,
    Selection,
    apply_retention,
    retry_histogram,
    status_report,
)
from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.cli import logs
from outboxkit.cli.output import print_table
from outboxkit.engine import Engine
from outboxkit.engine.housekeeping import housekeeping_step, lock_name
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.observability.logs import mask_url
from outboxkit.routing import Route, Routing
from tests.support.engine import fast_config, unique_routing, wait_for

EVENT = "thing.happened"


@pytest.fixture(params=["postgres", "mysql", "sqlite"], ids=["pg", "mariadb", "sqlite"])
def db(request: pytest.FixtureRequest) -> sa.Engine:
    engine: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    return engine


@pytest.fixture
def routing(unique: str) -> Routing:
    routing = unique_routing(unique, "things")
    routing.register(EVENT, "things")
    return routing


@pytest.fixture
def route(db: sa.Engine, routing: Routing) -> Iterator[Route]:
    route = routing.route_of(EVENT)
    repository = SqlRepository(db)
    repository.create_schema([route])
    yield route
    repository.close()
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))


def _engine(db: sa.Engine, routing: Routing, **config: object) -> Engine:
    engine = Engine(SqlRepository(db), MemoryBroker(), routing, config=fast_config(**config))

    @engine.register_handler(EVENT)
    def handle(event: Event, connection: Connection) -> None:
        if event.payload.get("poison"):
            from outboxkit.errors import PermanentError

            raise PermanentError("poison")

    return engine


def _publish(engine: Engine, n: int, **payload: object) -> None:
    engine.publish_many(
        [PublishRequest(event_type=EVENT, payload={"n": i, **payload}) for i in range(n)]
    )


def test_housekeeping_skips_while_another_worker_holds_the_lock_then_purges(
    db: sa.Engine, routing: Routing, route: Route
) -> None:
    engine = _engine(db, routing)
    _publish(engine, 3)
    _publish(engine, 1, poison=True)
    _drive(engine, route, consumed=3, dead=1)
    policy = RetentionPolicy(consumed_after=0, dead_after=None, batch_size=2)
    other = SqlRepository(db)
    try:
        with other.housekeeping_lock(lock_name([route])) as held:
            assert held
            outcome = housekeeping_step(engine.repository, [route], policy)
            if db.dialect.name == "sqlite":  # no cross-process lock: it just runs
                assert outcome is not None
            else:
                assert outcome is None
                assert engine.repository.count_by_status(route)[Status.CONSUMED] == 3
        results = housekeeping_step(engine.repository, [route], policy)
        assert results is not None or db.dialect.name == "sqlite"
        counts = engine.repository.count_by_status(route)
        assert counts[Status.CONSUMED] == 0 and counts[Status.DEAD] == 1  # dead rows kept
    finally:
        other.close()
        engine.repository.close()


def _drive(engine: Engine, route: Route, *, consumed: int, dead: int) -> None:
    """Run the engine's steps in this thread until the rows reached these counts."""

    def settled() -> bool:
        engine.run_once(receive_timeout=0.05)
        counts = engine.repository.count_by_status(route)
        return counts[Status.CONSUMED] == consumed and counts[Status.DEAD] == dead

    wait_for(settled, timeout=20, what=f"{consumed} consumed and {dead} dead rows")


def test_a_worker_with_retention_deletes_consumed_rows_in_its_housekeeping_thread(
    postgres_engine: sa.Engine, routing: Routing, unique: str
) -> None:
    route = routing.route_of(EVENT)
    engine = _engine(
        postgres_engine,
        routing,
        retention=RetentionPolicy(consumed_after=0.2, dead_after=0.2, interval=0.2),
    )
    engine.create_schema()
    try:
        engine.start()
        assert "outboxkit-housekeeping" in engine.thread_states()
        _publish(engine, 5)
        _publish(engine, 1, poison=True)
        wait_for(
            lambda: (
                engine.stats().consumed == 5
                and engine.repository.count_by_status(route) == dict.fromkeys(Status, 0)
            ),
            timeout=20,
            what="housekeeping to delete the consumed and dead rows",
        )
    finally:
        assert engine.stop(timeout=10)
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))


def test_retention_and_dead_letters_on_their_own(
    db: sa.Engine, routing: Routing, route: Route
) -> None:
    engine = _engine(db, routing)
    _publish(engine, 2)
    _publish(engine, 3, poison=True)
    _drive(engine, route, consumed=2, dead=3)
    repository = engine.repository

    [report] = status_report(repository, [route])
    assert report.dead == 3 and report.counts[Status.CONSUMED] == 2
    assert report.retries == retry_histogram({})

    kept = apply_retention(repository, [route], RetentionPolicy(consumed_after=3600))
    assert [(r.status, r.matched, r.deleted) for r in kept] == [(Status.CONSUMED, 0, 0)]
    dry = apply_retention(repository, [route], RetentionPolicy(consumed_after=0), dry_run=True)
    assert [(r.matched, r.deleted) for r in dry] == [(2, 0)]

    dlq = DeadLetters(repository, route)
    ids = [row.id for row in dlq.find()]
    result = dlq.requeue(Selection(ids=[ids[0], 987654]), batch_size=1)
    assert (result.matched, result.changed, result.not_matched) == (1, 1, (987654,))
    purged = dlq.purge(Selection(error_contains="poison"), batch_size=1)
    assert (purged.matched, purged.changed) == (2, 2)
    assert dlq.count() == 0
    repository.close()


def test_retry_histogram_buckets_every_count() -> None:
    assert retry_histogram({0: 2, 1: 1, 4: 3, 5: 1, 7: 1, 19: 4}) == {
        "0": 2,
        "1": 1,
        "2": 0,
        "3-5": 4,
        "6-10": 1,
        "11+": 4,
    }


def test_cli_logging_quiets_client_libraries_unless_asked() -> None:
    names = logs.CLIENT_LOGGERS
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        logs.configure_logging("info")
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in names)
        logs.configure_logging("debug")
        assert logging.getLogger("kafka").getEffectiveLevel() == logging.DEBUG
        logs.configure_logging("info", "error")
        assert logging.getLogger("kafka").getEffectiveLevel() == logging.ERROR
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_tables_fall_back_to_plain_text_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails
    out = io.StringIO()
    print_table(["id", "error"], [[1, "boom"], [22, "x"]], plain=False, out=out)
    assert out.getvalue().splitlines() == ["id  error", "1   boom", "22  x"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg2://app:s3cr%40t@db:5432/x", "postgresql+psycopg2://app:***@db:5432/x"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mysql+pymysql://root@db/x", "mysql+pymysql://root@db/x"),
        ("kafka://k1:9092,k2:9092", "kafka://k1:9092,k2:9092"),
    ],
)
def test_passwords_are_masked_in_printed_urls(url: str, shown: str) -> None:
    assert mask_url(url) == shown
