"""Health: liveness and readiness of real engines, over the API, HTTP and the console script.

An unreachable broker is a Redis URL on a free port; a stale backlog is a pending row
older than the limit; a stopped engine is what a wedged worker looks like to a probe.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.messages import PublishRequest
from outboxkit.observability.health import LIVENESS, READINESS
from outboxkit.observability.prometheus import PrometheusMetrics
from outboxkit.testing.services import free_port
from tests.support import observed_app
from tests.support.engine import fast_config, wait_for
from tests.support.observability import CONSOLE_SCRIPT, drop_outbox, get_status
from tests.support.paths import ROOT
from tests.support.timing import assert_within

EVENT = PublishRequest(event_type=observed_app.EVENT_TYPE, payload={})


def _engine(db: sa.Engine, broker_url: str, unique: str) -> Engine:
    engine = Engine(
        SqlRepository(db),
        RedisStreamsBroker.from_url(broker_url),
        observed_app.routing(unique),
        config=fast_config(),
    )
    engine.register_handler(observed_app.EVENT_TYPE, lambda event, connection: None)
    return engine


@pytest.fixture
def tables(
    postgres_engine: sa.Engine, mysql_engine: sa.Engine, redis_url: str, unique: str
) -> Iterator[None]:
    """The app's outbox table on both databases, dropped afterwards."""
    routing = observed_app.routing(unique)
    for db in (postgres_engine, mysql_engine):
        SqlRepository(db).create_schema([routing.route_of_service(observed_app.SERVICE)])
    yield
    for db in (postgres_engine, mysql_engine):
        drop_outbox(db, routing, redis_url, observed_app.SERVICE)


def _unreachable_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.usefixtures("tables")
def test_a_running_engine_is_live_and_ready_and_a_stopped_one_fails_liveness(
    postgres_engine: sa.Engine, redis_url: str, unique: str
) -> None:
    # Given a started engine on PostgreSQL and Redis, serving its probes
    engine = _engine(postgres_engine, redis_url, unique)
    engine.start()
    server = PrometheusMetrics(registry=CollectorRegistry()).serve(
        0, host="127.0.0.1", engine=engine
    )
    try:
        # When it is asked
        report = engine.health(max_backlog_age=60)
        # Then every check passes, and the threads were really looked at
        assert report.live and report.ready, report
        assert [c.name for c in report.checks] == ["threads", "database", "broker", "backlog"]
        threads = next(c for c in report.checks if c.name == "threads")
        assert (
            threads.details == {"threads": len(engine.thread_states())} and threads.reason is None
        )
        status, body = get_status(f"{server.url}/livez")
        # liveness looks at the threads only: no database or broker call per probe
        assert status == 200 and [c["name"] for c in json.loads(body)["checks"]] == ["threads"]
        assert get_status(f"{server.url}/readyz")[0] == 200

        # When the engine stops (its threads are gone)
        engine.stop(timeout=10)
        status, body = get_status(f"{server.url}/livez")
        # Then liveness fails, naming why
        assert status == 503
        failing = [c for c in json.loads(body)["checks"] if not c["ok"]]
        assert (failing[0]["name"], failing[0]["reason"]) == ("threads", "engine stopped")
    finally:
        server.close()
        engine.stop(timeout=10)


@pytest.mark.usefixtures("tables")
def test_an_unreachable_broker_makes_the_engine_not_ready_but_still_live(
    mysql_engine: sa.Engine, unique: str
) -> None:
    # Given an engine on MariaDB whose Redis is not there
    engine = _engine(mysql_engine, _unreachable_redis(), unique)
    try:
        started = time.monotonic()
        # When it is asked
        report = engine.health()
        # Then it answers quickly (a refused connection, no timeout to wait out): not
        # ready because of the broker, yet live
        assert_within(time.monotonic() - started, 0.0, "health() with Redis refusing")
        assert report.live and not report.ready
        assert [c.name for c in report.failures] == ["broker"]
        assert report.failures[0].reason == "the broker does not answer: BrokerUnavailableError"
        assert "Connection refused" in (report.failures[0].error or "")
        assert report.passes(LIVENESS) and not report.passes(READINESS)
    finally:
        engine.stop(timeout=5)


@pytest.mark.usefixtures("tables")
def test_a_pending_row_older_than_the_limit_fails_readiness_only(
    mysql_engine: sa.Engine, redis_url: str, unique: str
) -> None:
    # Given a pending row on MariaDB that nobody relays for over a second
    engine = _engine(mysql_engine, redis_url, unique)
    try:
        engine.publish(EVENT)
        time.sleep(1.2)
        # When health is asked with a 0.5 s limit, and with a 60 s one
        strict = engine.health(max_backlog_age=0.5)
        lenient = engine.health(max_backlog_age=60)
        # Then only the strict one fails, on the backlog, naming the service and the age
        assert strict.live and not strict.ready
        (failure,) = strict.failures
        assert failure.name == "backlog" and failure.probe == READINESS
        assert f"oldest pending row of {observed_app.SERVICE} is" in (failure.reason or "")
        assert lenient.ready, lenient
    finally:
        engine.stop(timeout=5)


@pytest.mark.usefixtures("tables")
def test_health_command_exit_codes_suit_liveness_and_readiness_probes(
    postgres_engine: sa.Engine, redis_url: str, unique: str
) -> None:
    db_url = postgres_engine.url.render_as_string(hide_password=False)

    def health(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            OBSERVED_APP_DB=db_url,
            OBSERVED_APP_BROKER=broker_url,
            OBSERVED_APP_UNIQUE=unique,
        )
        return subprocess.run(
            [CONSOLE_SCRIPT, "health", "tests.support.observed_app:build", *args],
            cwd=ROOT,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # Given the real database and Redis: ready, exit 0, a JSON report
    ok = health(redis_url, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["live"] and report["ready"]
    assert {c["name"]: c["details"] for c in report["checks"]}["database"]["pending"] == {
        observed_app.SERVICE: 0
    }

    # Given Redis down: the readiness probe fails (exit 1) naming the broker ...
    down = health(_unreachable_redis())
    assert down.returncode == 1, down.stdout + down.stderr
    assert "broker    FAIL (readiness)" in down.stdout
    # ... while the liveness probe passes (a restart would not bring Redis back)
    assert health(_unreachable_redis(), "--probe", "liveness").returncode == 0

    # Given a pending row older than --max-backlog-age: not ready
    publisher = _engine(postgres_engine, redis_url, unique)
    publisher.publish(EVENT)
    publisher.stop(timeout=5)
    time.sleep(1.2)
    stale = health(redis_url, "--max-backlog-age", "0.5")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "backlog   FAIL" in stale.stdout

    # Given a wrong option or an app that cannot be loaded: a usage error, exit 2
    assert health(redis_url, "--probe", "sideways").returncode == 2
    env = dict(os.environ, OBSERVED_APP_UNIQUE=unique)
    missing = subprocess.run(
        [CONSOLE_SCRIPT, "health", "tests.no_such_app:build"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "cannot load tests.no_such_app:build" in missing.stderr


@pytest.mark.usefixtures("tables")
# the thread's death is the point of the test, not an accident to report
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_consumer_thread_fails_liveness_naming_the_thread(
    postgres_engine: sa.Engine, redis_url: str, unique: str
) -> None:
    # Given a started engine whose handler ends its thread (a handler calling sys.exit())
    engine = Engine(
        SqlRepository(postgres_engine),
        RedisStreamsBroker.from_url(redis_url),
        observed_app.routing(unique),
        config=fast_config(),
    )

    def exit_thread(event: object, connection: object) -> None:
        raise SystemExit("handler called sys.exit()")

    engine.register_handler(observed_app.EVENT_TYPE, exit_thread)
    engine.start()
    try:
        assert engine.health().live
        # When an event reaches that handler
        engine.publish(EVENT)
        consumer = f"outboxkit-consumer-{observed_app.SERVICE}-0"
        wait_for(lambda: not engine.thread_states()[consumer], timeout=30, what="the thread to die")
        # Then the worker is reported not live, with the thread's name as the reason
        report = engine.health()
        assert not report.live and not report.ready
        (failure,) = report.failures
        assert failure.name == "threads" and failure.reason == f"threads not alive: {consumer}"
    finally:
        engine.stop(timeout=10)


def test_a_database_that_never_answers_fails_readiness_within_the_timeout(
    redis_url: str, unique: str
) -> None:
    # Given a "PostgreSQL" that accepts connections and never answers (a listening socket
    # nobody serves: the real driver connects and then waits forever)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        hung = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test")
        engine = _engine(hung, redis_url, unique)
        try:
            # When health is asked with a 1 s timeout
            started = time.monotonic()
            report = engine.health(timeout=1.0)
            elapsed = time.monotonic() - started
            # Then it answers in about that time: not ready because of the database alone
            assert_within(elapsed, 1.0, "health(timeout=1.0) of a silent database")
            assert report.live and not report.ready
            (failure,) = report.failures
            assert (failure.name, failure.reason) == ("database", "no answer within 1 s")
        finally:
            engine.stop(timeout=5)
    hung.dispose()
