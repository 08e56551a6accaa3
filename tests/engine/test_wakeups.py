"""Relays wake up when rows are committed, in this process or another (PostgreSQL NOTIFY)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.consume.config import ConsumerConfig
from outboxkit.engine import Engine, EngineConfig
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import RelayConfig
from outboxkit.routing import Route, Routing
from tests.support.engine import ObservedRepository, unique_routing, wait_for


@pytest.fixture
def routing(unique: str) -> Routing:
    routing = unique_routing(unique, "orders")
    routing.register("order.placed", "orders")
    return routing


@pytest.fixture
def route(routing: Routing) -> Route:
    return routing.route_of("order.placed")


@pytest.fixture
def pg_repository(postgres_engine: sa.Engine, route: Route) -> Iterator[SqlRepository]:
    repository = SqlRepository(postgres_engine)
    repository.create_schema([route])
    yield repository
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {route.table}"))


def heard(listener: Any, table: str, seconds: float) -> bool:
    """Whether ``table``'s notification arrives within ``seconds``; other tables' (another
    program publishing on the same database) are ignored."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if table in listener.wait(left):
            return True
    return False


def test_a_listener_hears_committed_rows_and_not_rolled_back_ones(
    pg_repository: SqlRepository, routing: Routing, route: Route, postgres_engine: sa.Engine
) -> None:
    listener = pg_repository.new_row_listener()
    assert listener is not None
    try:
        publisher = Publisher(pg_repository, routing)
        with postgres_engine.connect() as conn, conn.begin() as trans:
            publisher.publish(
                PublishRequest(event_type="order.placed", payload={}), connection=conn
            )
            trans.rollback()
        assert not heard(listener, route.table, 0.5)  # a rolled back publish notifies nobody

        with postgres_engine.begin() as conn:
            publisher.publish(
                PublishRequest(event_type="order.placed", payload={}), connection=conn
            )
            assert not heard(listener, route.table, 0.2)  # not before the commit
        assert heard(listener, route.table, 5.0)
    finally:
        listener.close()
        listener.close()  # idempotent


def test_only_postgresql_repositories_notify(
    mysql_engine: sa.Engine, sqlite_engine: sa.Engine
) -> None:
    assert not SqlRepository(mysql_engine).notifies_new_rows
    assert SqlRepository(mysql_engine).new_row_listener() is None
    assert not SqlRepository(sqlite_engine).notifies_new_rows


def test_a_relay_wakes_for_a_commit_made_by_another_process(
    pg_repository: SqlRepository, routing: Routing, route: Route, postgres_engine: sa.Engine
) -> None:
    """The relay polls only every 60 s here; the publisher shares nothing with the engine
    but the database (its own engine and pool, as another process would), so only the
    PostgreSQL notification can bring the row over within seconds."""
    config = EngineConfig(
        relay=RelayConfig(idle_interval=60, min_poll_interval=60, republish_after=None),
        consumer=ConsumerConfig(receive_timeout=0.2),
        consumer_threads=0,
        relay_services=("orders",),
    )
    broker = MemoryBroker()
    observed = ObservedRepository(postgres_engine)
    engine = Engine(observed, broker, routing, config=config)
    other_process_db = sa.create_engine(postgres_engine.url)
    other = Publisher(SqlRepository(other_process_db), routing)
    engine.start()
    try:
        # The relay's first claim found nothing (it now waits 60 s) and the listener is
        # listening: waited for, so the row cannot come over by that first claim
        assert observed.empty_claim.wait(30), "the relay never made its first claim"
        assert observed.listening.wait(30), "the new-row listener never started"
        request = PublishRequest(event_type="order.placed", payload={})
        with other_process_db.begin() as conn:
            other.publish(request, connection=conn)

        def published() -> bool:
            row = pg_repository.get_by_event_id(route, request.event_id)
            return row is not None and row.status is Status.PUBLISHED

        wait_for(published, timeout=10, what="the notified relay to publish the row")
    finally:
        assert engine.stop(timeout=10)
        observed.close()
        other_process_db.dispose()
