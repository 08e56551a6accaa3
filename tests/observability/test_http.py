"""The metrics and health endpoint under hostile or careless clients (issue #18, rows 9, 13).

* It binds the loopback address unless told otherwise.
* A parameter that is not a finite number in range is answered 400 with one line
  (``?timeout=inf`` dropped the connection, ``nan`` gave JSON with a bare NaN, ``0`` became
  5 s silently).
* A failing check says what is wrong without connection details (the database user, host,
  table), which go to the log.
* Half-sent requests hold no thread and are dropped after the request time-out, while the
  endpoint keeps answering; parallel probes share one run of the checks and all get an
  answer.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.observability.http import serve_metrics
from outboxkit.observability.prometheus import PrometheusMetrics, worker_metrics
from outboxkit.testing.services import free_port
from tests.support.engine import fast_config, unique_routing
from tests.support.observability import get_status


def _engine(repository: SqlRepository, broker: object, unique: str) -> Engine:
    routing = unique_routing(unique, "billing")
    routing.register("invoice.sent", "billing")
    engine = Engine(repository, broker, routing, config=fast_config())  # type: ignore[arg-type]
    engine.register_handler("invoice.sent", lambda event, connection: None)
    return engine


@pytest.fixture
def quiet_engine(tmp_path: Path, unique: str) -> Iterator[Engine]:
    """An engine on SQLite and the in-process broker whose checks all pass."""
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/outbox.db")
    engine = _engine(repository, MemoryBroker(), unique)
    engine.create_schema()
    yield engine
    engine.stop(timeout=5)
    repository.close()


def test_the_endpoint_binds_the_loopback_address_unless_told(quiet_engine: Engine) -> None:
    for server in (
        serve_metrics(CollectorRegistry(), 0),
        PrometheusMetrics(registry=CollectorRegistry()).serve(0),
        worker_metrics(quiet_engine, 0),
    ):
        with server:
            assert server.host == "127.0.0.1"
            assert get_status(f"{server.url}/metrics")[0] == 200
    with serve_metrics(CollectorRegistry(), 0, host="0.0.0.0") as everywhere:
        assert everywhere.host == "0.0.0.0"
        assert get_status(f"http://127.0.0.1:{everywhere.port}/metrics")[0] == 200


@pytest.mark.parametrize(
    "query",
    [
        "timeout=inf",
        "timeout=nan",
        "timeout=0",
        "timeout=-1",
        "timeout=61",
        "timeout=soon",
        "timeout=",
        "max_backlog_age=-5",
        "max_backlog_age=inf",
        "max_backlog_age=nan",
        "timeout=1&timeout=2",
        "verbose=1",
        "timeout=1e999",
    ],
)
@pytest.mark.parametrize("path", ["/readyz", "/livez"])
def test_a_bad_parameter_is_answered_400_in_one_line(
    quiet_engine: Engine, path: str, query: str
) -> None:
    with serve_metrics(CollectorRegistry(), 0, engine=quiet_engine) as server:
        status, body = get_status(f"{server.url}{path}?{query}")
    assert status == 400, body
    text = body.decode()
    assert text.endswith("\n") and text.count("\n") == 1
    assert query.split("=", maxsplit=1)[0] in text


def test_good_parameters_are_taken(quiet_engine: Engine) -> None:
    with serve_metrics(CollectorRegistry(), 0, engine=quiet_engine) as server:
        status, body = get_status(f"{server.url}/readyz?timeout=2.5&max_backlog_age=300")
    assert status == 200, body
    report = json.loads(body)
    assert [c["name"] for c in report["checks"]] == ["threads", "database", "broker", "backlog"]


@pytest.mark.postgres
def test_a_failing_check_names_no_user_host_or_table(
    postgres_engine: sa.Engine, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an engine whose table was never created and whose Redis is not there
    broker_port = free_port()
    engine = _engine(
        SqlRepository(postgres_engine),
        RedisStreamsBroker.from_url(f"redis://:s3cret@127.0.0.1:{broker_port}/0"),
        unique,
    )
    table = engine.routing.route_of_service("billing").table
    try:
        with (
            serve_metrics(CollectorRegistry(), 0, engine=engine) as server,
            caplog.at_level(logging.WARNING, logger="outboxkit.observability.http"),
        ):
            # When a probe asks
            status, body = get_status(f"{server.url}/readyz")
        # Then it is told what is wrong ...
        assert status == 503
        failures = {c["name"]: c["reason"] for c in json.loads(body)["checks"] if not c["ok"]}
        assert failures == {
            "database": "cannot read the outbox of service billing: DatabaseSetupError",
            "broker": "the broker does not answer: BrokerUnavailableError",
        }
        # ... without the database user, host, port or table, nor the broker's address
        text = body.decode()
        user = postgres_engine.url.username or "postgres"
        for secret in (table, user, "127.0.0.1", str(broker_port), "s3cret", "5432"):
            assert secret not in text
        # which the log says, once, for the operator
        (logged,) = [r.getMessage() for r in caplog.records]
        assert table in logged and str(broker_port) in logged and "s3cret" not in logged
    finally:
        engine.stop(timeout=5)


def _threads() -> int:
    return threading.active_count()


def test_half_sent_requests_hold_no_thread_and_are_dropped(quiet_engine: Engine) -> None:
    with serve_metrics(CollectorRegistry(), 0, engine=quiet_engine) as server:
        assert get_status(f"{server.url}/livez")[0] == 200  # its workers exist now
        before = _threads()
        # Given 100 clients that send half a request and then nothing
        slow = []
        for _ in range(100):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: probe\r\n")
            slow.append(conn)
        try:
            # Then the endpoint still answers, and no thread was started for them
            assert get_status(f"{server.url}/livez")[0] == 200
            assert get_status(f"{server.url}/metrics")[0] == 200
            assert _threads() <= before + 2  # a probe's checks may still be ending
            # and each half-sent request is dropped after the time-out
            for conn in slow:
                answer = conn.recv(1024)  # blocks until the server gives up on it
                assert answer == b"" or answer.startswith(b"HTTP/1.0 408")
        finally:
            for conn in slow:
                conn.close()
        assert get_status(f"{server.url}/livez")[0] == 200


def test_too_many_connections_drop_the_oldest_unfinished(quiet_engine: Engine) -> None:
    with serve_metrics(CollectorRegistry(), 0, engine=quiet_engine) as server:
        slow = [
            socket.create_connection(("127.0.0.1", server.port), timeout=30)
            for _ in range(300)  # more than it keeps (http.MAX_CONNECTIONS)
        ]
        try:
            for conn in slow:
                conn.sendall(b"GET /livez HTTP/1.1\r\n")
            # a whole request still gets in, and the first ones are let go (to make room,
            # or at the latest after the request time-out)
            assert get_status(f"{server.url}/livez")[0] == 200
            first = slow[0].recv(1024)
            assert first == b"" or first.startswith(b"HTTP/1.0 408"), first
        finally:
            for conn in slow:
                conn.close()


@pytest.mark.postgres
def test_two_hundred_parallel_probes_are_all_answered(
    postgres_engine: sa.Engine, unique: str
) -> None:
    # Given a ready engine on PostgreSQL
    repository = SqlRepository(postgres_engine)
    engine = _engine(repository, MemoryBroker(), unique)
    engine.create_schema()
    runs: list[float] = []
    health = engine.health

    def counted(**kwargs: object) -> object:
        runs.append(time.monotonic())
        return health(**kwargs)  # type: ignore[arg-type]

    engine.health = counted  # type: ignore[method-assign]
    try:
        with serve_metrics(CollectorRegistry(), 0, engine=engine) as server:
            # When 200 probes ask at once
            def probe(_: int) -> int:
                with urllib.request.urlopen(f"{server.url}/readyz", timeout=60) as response:
                    return int(response.status)

            with ThreadPoolExecutor(200) as clients:
                statuses = list(clients.map(probe, range(200)))
        # Then every one is answered ready, by fewer runs of the checks than probes
        assert statuses == [200] * 200
        assert len(runs) < 200
    finally:
        engine.stop(timeout=5)
        with postgres_engine.begin() as conn:
            table = engine.routing.route_of_service("billing").table
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def test_the_worker_takes_a_metrics_host() -> None:
    from outboxkit.cli.main import build_parser

    args = build_parser().parse_args(["worker", "app:engine", "--metrics-port", "0"])
    assert args.metrics_host == "127.0.0.1"
    args = build_parser().parse_args(
        ["worker", "app:engine", "--metrics-port", "0", "--metrics-host", "0.0.0.0"]
    )
    assert args.metrics_host == "0.0.0.0"
