"""Outages and surprises: the engine's loops back off, resume by themselves, and go on.

The broker outage is real: a Redis server that does not exist yet when the engine starts,
started on the same port while the engine runs.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import BrokerMessage, SendResult
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.routing import Routing
from outboxkit.testing.services import free_port
from tests.support.engine import (
    failed_attempts,
    fast_config,
    orders_routing,
    scratch_repository,
    wait_for,
)
from tests.support.tcp_cutter import TcpCutter


@pytest.fixture
def routing(unique: str) -> Routing:
    return orders_routing(unique)


@pytest.fixture
def repository(postgres_engine: sa.Engine, routing: Routing) -> Iterator[SqlRepository]:
    with scratch_repository(postgres_engine, routing) as repository:
        yield repository


@pytest.fixture
def late_redis() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A loopback port where a Redis server is started only when the test says so."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server binary not found on PATH; the outage test starts its own")
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []
    yield port, started
    for process in started:
        process.terminate()
        process.wait(10)


def _start_redis(port: int, started: list[subprocess.Popen[bytes]]) -> None:
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    started.append(subprocess.Popen([*args, "--appendonly", "no"], stdout=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"temporary redis-server on 127.0.0.1:{port} did not start")


def test_a_broker_outage_pauses_the_engine_which_resumes_without_burning_retries(
    repository: SqlRepository,
    routing: Routing,
    late_redis: tuple[int, list[subprocess.Popen[bytes]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, started = late_redis
    caplog.set_level(logging.DEBUG, logger="outboxkit.engine.loops")
    handled: list[str] = []
    engine = Engine(
        repository,
        RedisStreamsBroker.from_url(f"redis://127.0.0.1:{port}/0"),
        routing,
        config=fast_config(),
    )
    engine.register_handler("order.placed", lambda event, conn: handled.append(event.event_id))
    engine.start()
    try:
        request = PublishRequest(event_type="order.placed", message_key="k", payload={})
        engine.publish(request)
        failed_before = failed_attempts(caplog, "relay orders")
        route = routing.route_of("order.placed")
        # the relay tries and fails several times meanwhile (waited for: its outage log
        # says "paused" at the first failed attempt and counts the later ones)
        wait_for(
            lambda: failed_attempts(caplog, "relay orders") >= failed_before + 3,
            timeout=30,
            what="three failed relay attempts after the publish",
        )
        row = repository.get_by_event_id(route, request.event_id)
        assert row is not None and row.status is Status.PENDING and row.retry_count == 0

        _start_redis(port, started)

        wait_for(
            lambda: (
                getattr(repository.get_by_event_id(route, request.event_id), "status", None)
                is Status.CONSUMED
            ),
            timeout=40,
            what="the event to be consumed after the broker came back",
        )
        row = repository.get_by_event_id(route, request.event_id)
        assert row is not None and row.retry_count == 0  # the outage cost no retries
        assert handled == [request.event_id]
    finally:
        assert engine.stop(timeout=10)


class _FailsOnce(MemoryBroker):
    """The in-process broker with one unexpected (non-broker) error injected into publish."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("a bug nobody expected")
        return super().publish(messages)


def test_an_unexpected_exception_in_a_loop_is_logged_and_the_loop_goes_on(
    repository: SqlRepository, routing: Routing, caplog: pytest.LogCaptureFixture
) -> None:
    broker = _FailsOnce()
    engine = Engine(repository, broker, routing, config=fast_config())
    done: list[str] = []

    def handle(event: Event, connection: Connection) -> None:
        done.append(event.event_id)

    engine.register_handler("order.placed", handle)
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)
    engine.start()
    try:
        wait_for(lambda: done == [request.event_id], timeout=40, what="handled after the bug")
    finally:
        assert engine.stop(timeout=10)

    assert broker.failures == 1
    assert any(
        "relay orders step failed unexpectedly" in r.getMessage() and r.exc_info
        for r in caplog.records
    )


@pytest.fixture
def severable_postgres(postgres_engine: sa.Engine) -> Iterator[tuple[sa.Engine, TcpCutter]]:
    """The real PostgreSQL behind a forwarder the test can cut, as a network outage would."""
    url = postgres_engine.url
    cutter = TcpCutter((url.host or "127.0.0.1", url.port or 5432))
    engine = sa.create_engine(url.set(host="127.0.0.1", port=cutter.port), pool_pre_ping=True)
    yield engine, cutter
    engine.dispose()
    cutter.close()


def test_a_database_outage_while_handling_loses_nothing_and_costs_no_retry(
    severable_postgres: tuple[sa.Engine, TcpCutter],
    postgres_engine: sa.Engine,
    routing: Routing,
    redis_url: str,
) -> None:
    db, cutter = severable_postgres
    repository = SqlRepository(db)
    repository.create_schema(routing.routes())
    route = routing.route_of("order.placed")
    attempts: list[int] = []

    def handler(event: Event, connection: Connection) -> None:
        attempts.append(event.attempt)
        if len(attempts) == 1:  # the database goes away in the middle of the first try
            cutter.cut()
            threading.Timer(1.5, cutter.restore).start()
        connection.execute(sa.text("SELECT 1"))

    broker = RedisStreamsBroker.from_url(redis_url)
    engine = Engine(repository, broker, routing, config=fast_config())
    engine.register_handler("order.placed", handler)
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)
    engine.start()
    try:
        # The outcome could not be recorded, so the delivery was not acknowledged: it
        # comes again once the database is back, and is handled then.
        wait_for(
            lambda: (
                len(attempts) >= 2
                and getattr(
                    SqlRepository(postgres_engine).get_by_event_id(route, request.event_id),
                    "status",
                    None,
                )
                is Status.CONSUMED
            ),
            timeout=40,
            what="the event consumed after the database came back",
        )
    finally:
        assert engine.stop(timeout=10)
        cutter.restore()

    row = SqlRepository(postgres_engine).get_by_event_id(route, request.event_id)
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {route.table}"))
    cleanup = redis.Redis.from_url(redis_url)
    cleanup.delete(route.topic)
    cleanup.close()
    assert row is not None and row.retry_count == 0
    assert attempts[:2] == [1, 1]
