"""Fail fast: a setup that cannot work stops the worker at once, with one clear line.

A refused password, an unknown database or a missing outbox table never heals by waiting.
The worker must not log a traceback per retry and exit 0 on SIGTERM (what an operations
report saw); it logs one ERROR line and exits non-zero within seconds. Transient outages,
on the other hand, back off and are logged once per state change.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine, EngineConfig
from outboxkit.engine.outages import OutageLog
from outboxkit.errors import DatabaseSetupError, FatalError, RepositoryError
from outboxkit.routing import Routing
from outboxkit.testing.services import free_port
from tests.support.engine import failed_attempts, fatal_error_on_start, wait_for
from tests.support.paths import ROOT
from tests.support.timing import assert_within

#: The brief's promise: a worker with a bad setup is gone within this many seconds
#: (interpreter start-up included; asserted with the load margin of tests.support.timing:
#: the defect is a worker that retries for ever).
FAIL_FAST_SECONDS = 10.0


def _with_database(url: sa.URL, **parts: str) -> str:
    return url.set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


def _run_worker(db_url: str, service: str) -> tuple[int, str, float]:
    env = dict(os.environ, RUNNER_APP_DB_URL=db_url, RUNNER_APP_SERVICE=service)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "outboxkit", "worker", "tests.support.runner_app:build"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _assert_one_clear_line(output: str, *needles: str) -> None:
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert "fatal error" in errors[0], output
    for needle in needles:
        assert needle in errors[0], output
    assert "Traceback" not in output, output
    assert "WARNING" not in output, output


def test_worker_with_a_wrong_mariadb_password_exits_non_zero_within_seconds(
    mysql_engine: sa.Engine, unique: str
) -> None:
    url = _with_database(mysql_engine.url, password=f"wrong-{unique}")

    code, output, took = _run_worker(url, f"ff{unique}")

    assert code == 1, output
    assert_within(took, FAIL_FAST_SECONDS, f"a worker failing fast ({output})")
    _assert_one_clear_line(output, "1045", "Access denied")
    assert f"wrong-{unique}" not in output  # the password is masked in the logged URL
    assert "***" in output


def test_worker_on_an_unknown_postgresql_database_exits_non_zero_within_seconds(
    postgres_engine: sa.Engine, unique: str
) -> None:
    url = _with_database(postgres_engine.url, database=f"missing_{unique}")

    code, output, took = _run_worker(url, f"ff{unique}")

    assert code == 1, output
    assert_within(took, FAIL_FAST_SECONDS, f"a worker failing fast ({output})")
    _assert_one_clear_line(output, f'database "missing_{unique}" does not exist')


@pytest.mark.parametrize("database", ["postgres", "mysql"])
def test_worker_without_its_outbox_table_exits_non_zero_naming_the_table(
    database: str, request: pytest.FixtureRequest, unique: str
) -> None:
    engine: sa.Engine = request.getfixturevalue(f"{database}_engine")
    url = engine.url.render_as_string(hide_password=False)

    code, output, took = _run_worker(url, f"ff{unique}")

    # The consumer's start-up check refuses it before any thread runs: one line, exit 1.
    assert code == 1, output
    assert_within(took, FAIL_FAST_SECONDS, f"a worker failing fast ({output})")
    refusals = [line for line in output.splitlines() if "cannot start" in line]
    assert len(refusals) == 1, output
    assert f"ff{unique}_outbox_messages" in refusals[0], output
    assert "outboxkit migrate" in refusals[0], output
    assert "Traceback" not in output and "WARNING" not in output, output


def test_a_fatal_error_stops_every_thread_and_is_kept_on_the_engine(
    postgres_engine: sa.Engine, unique: str
) -> None:
    # Given a relay-only engine whose table was never created (an engine that consumes the
    # service refuses to start instead: its start-up check looks for the table)
    routing = Routing()
    routing.register("ff.checked", f"ff{unique}")
    engine = Engine(
        SqlRepository(postgres_engine),
        MemoryBroker(),
        routing,
        config=EngineConfig(consumer_services=()),
    )
    engine.register_handler("ff.checked", lambda event, connection: None)

    # When it starts
    engine.start()
    try:
        wait_for(lambda: engine.fatal_error is not None, timeout=5, what="a fatal error")
        wait_for(lambda: not any(engine.thread_states().values()), timeout=5, what="threads end")
    finally:
        assert engine.stop(timeout=5)

    # Then the error names the table and is both fatal and a repository error
    error = engine.fatal_error
    assert isinstance(error, DatabaseSetupError)
    assert isinstance(error, FatalError) and isinstance(error, RepositoryError)
    assert f"ff{unique}_outbox_messages" in str(error)


def test_an_unreachable_database_backs_off_and_warns_once_not_per_retry(
    caplog: pytest.LogCaptureFixture, unique: str
) -> None:
    # Given a database server that is down (nothing listens on the port): transient
    url = f"postgresql+psycopg2://app:secret-{unique}@127.0.0.1:{free_port()}/test"
    routing = Routing()
    routing.register("ff.checked", f"ff{unique}")
    engine = Engine(SqlRepository.from_url(url), MemoryBroker(), routing)
    engine.register_handler("ff.checked", lambda event, connection: None)
    caplog.set_level(logging.DEBUG, logger="outboxkit")

    # When the engine has retried a few times (attempts at 0, 1 and 3 s; waited for)
    engine.start()
    try:
        for loop in ("new-row listener", f"relay ff{unique}"):
            wait_for(
                lambda loop=loop: failed_attempts(caplog, loop) >= 3,
                timeout=30,
                what=f"three failed attempts of the {loop}",
            )
        assert engine.fatal_error is None  # an outage is not fatal
    finally:
        assert engine.stop(timeout=5)

    # Then each loop warned once, without a traceback, and said it keeps trying
    # (outboxkit's own records: a client thread an earlier test left may log meanwhile)
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("outboxkit")
    ]
    # (the consumer has received nothing, so it has not needed the database yet)
    assert sorted(r.getMessage().split(" paused")[0] for r in warnings) == [
        "new-row listener",
        f"relay ff{unique}",
    ], [r.getMessage() for r in warnings]
    assert all("\n" not in r.getMessage() for r in warnings)  # one line each
    assert all(r.exc_info is None for r in warnings)
    retries = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert retries and all(r.levelno == logging.DEBUG for r in retries)
    assert f"secret-{unique}" not in caplog.text  # the password is masked


def test_an_outage_log_summarises_a_long_outage_and_reports_the_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = OutageLog(logging.getLogger("outboxkit.test"), "relay x", clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="outboxkit.test")

    for second in range(0, 130, 2):  # 65 failures over 128 s
        now[0] = float(second)
        log.failed(RepositoryError("down"), 2.0)
    now[0] = 130.0
    log.recovered()
    log.recovered()  # nothing more to say

    shown = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in shown] == ["WARNING", "WARNING", "WARNING", "INFO"], shown
    assert "still down after 60 s (31 attempts)" in shown[1][1]
    assert "still down after 120 s (61 attempts)" in shown[2][1]
    assert "recovered after 130.0 s (65 failed attempts)" in shown[3][1]


def test_a_refused_redis_password_is_fatal_not_an_outage(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    from outboxkit.brokers.redis_streams import RedisStreamsBroker
    from outboxkit.errors import BrokerSetupError

    # Given Redis credentials the server refuses
    parts = urlsplit(redis_url)
    netloc = f"nobody{unique}:wrong@{parts.hostname}:{parts.port or 6379}"
    broker_url = urlunsplit(parts._replace(netloc=netloc))
    routing = Routing()
    routing.register("ff.checked", f"ff{unique}")
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/outbox.db")
    engine = Engine(repository, RedisStreamsBroker.from_url(broker_url), routing)
    engine.register_handler("ff.checked", lambda event, connection: None)
    engine.create_schema()

    # When the engine starts, then it stops by itself with a setup error
    error = fatal_error_on_start(engine, timeout=5, closing=repository)
    assert isinstance(error, BrokerSetupError)
    assert "AuthenticationError" in str(error)


def _redis_database_out_of_range(redis_url: str) -> str:
    """``redis_url`` naming the first database number the server does not have."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        databases = int(client.config_get("databases")["databases"])
    finally:
        client.close()
    return urlunsplit(urlsplit(redis_url)._replace(path=f"/{databases}"))


def test_a_redis_database_the_server_does_not_have_stops_the_worker_in_one_line(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    # Given a worker whose Redis URL names a database past the server's `databases`
    env = dict(
        os.environ,
        RUNNER_APP_DB_URL=f"sqlite:///{tmp_path}/outbox.db",
        RUNNER_APP_SERVICE=f"ff{unique}",
        RUNNER_APP_BROKER=_redis_database_out_of_range(redis_url),
    )
    # When it starts
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "outboxkit",
            "worker",
            "tests.support.runner_app:build",
            "--migrate",
        ],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    # Then it exits 1 within seconds, with one ERROR line that says what to fix
    assert done.returncode == 1, output
    assert_within(time.monotonic() - started, FAIL_FAST_SECONDS, f"failing fast ({output})")
    _assert_one_clear_line(output, "DB index is out of range", "databases")


def test_a_redis_database_out_of_range_is_fatal_for_a_relay_alone_and_for_publish(
    redis_url: str, tmp_path: Path, unique: str
) -> None:
    from outboxkit.broker import BrokerMessage
    from outboxkit.brokers.redis_streams import RedisStreamsBroker
    from outboxkit.errors import BrokerSetupError

    # Given a relay-only engine (no consumer to meet the error first) on such a database
    url = _redis_database_out_of_range(redis_url)
    routing = Routing()
    routing.register("ff.checked", f"ff{unique}")
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/outbox.db")
    engine = Engine(
        repository,
        RedisStreamsBroker.from_url(url),
        routing,
        config=EngineConfig(consumer_services=()),
    )
    engine.register_handler("ff.checked", lambda event, connection: None)
    engine.create_schema()
    # When it starts, Then it stops by itself with a setup error
    error = fatal_error_on_start(engine, timeout=5, closing=repository)
    assert isinstance(error, BrokerSetupError)
    assert "DB index is out of range" in str(error)
    # And a publish on such a broker raises it too, rather than blaming each message
    with RedisStreamsBroker.from_url(url) as broker, pytest.raises(BrokerSetupError):
        broker.publish([BrokerMessage(topic=f"ff.{unique}", key="k", value=b"v")])
