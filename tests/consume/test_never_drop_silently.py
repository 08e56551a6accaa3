"""A consumer that cannot find or own an event says so, with the ids and the likely cause.

The situation of issue #10: ``orders`` publishes ``invoice.requested`` on PostgreSQL and a
``billing`` consumer runs on MariaDB without an inbox. Before, each event was acknowledged
with a terse warning and the misplacement was found only when rows went ``dead``.
"""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.outbox_ledger import MISSING_STREAK_ALARM, OutboxLedger
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError
from outboxkit.messages import Event, Outcome, PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay
from tests.support.engine import fast_config, unique_routing

pytestmark = [pytest.mark.postgres, pytest.mark.mysql]


def _drop(db: sa.Engine, table: str) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def test_a_consumer_on_another_database_warns_per_event_and_raises_the_alarm(
    postgres_engine: sa.Engine,
    mysql_engine: sa.Engine,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given: billing's table migrated on both databases, rows written on PostgreSQL only
    routing = unique_routing(unique, "billing")
    route = routing.register("invoice.requested", "billing")
    producer_repo, consumer_repo = SqlRepository(postgres_engine), SqlRepository(mysql_engine)
    producer_repo.create_schema([route])
    consumer_repo.create_schema([route])
    broker = MemoryBroker()
    registry = HandlerRegistry(routing)
    handled: list[str] = []
    registry.register("invoice.requested", lambda event, conn: handled.append(event.event_id))
    publisher = Publisher(producer_repo, routing)
    ids = [
        publisher.publish(PublishRequest(event_type="invoice.requested", payload={"n": n}))
        for n in range(MISSING_STREAK_ALARM)
    ]
    try:
        Relay(producer_repo, broker, route).run_once()
        consumer = Consumer(OutboxLedger(consumer_repo, route), registry)
        subscription = broker.subscribe(route.topic, route.group, "billing-on-mariadb")
        # When: the MariaDB consumer receives them
        with caplog.at_level(logging.WARNING, logger="outboxkit.consume"):
            deliveries = subscription.receive(timeout=1, max_messages=100)
            outcomes = consumer.handle_batch(deliveries)
        # Then: every event is named with the likely cause, and the streak raises an ERROR
        assert outcomes == [Outcome.SKIPPED] * MISSING_STREAK_ALARM
        assert handled == []
        assert consumer.ledger.missing_rows == MISSING_STREAK_ALARM
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for event_id in ids:
            [line] = [w for w in warnings if event_id in w]
            assert route.table in line
            assert "another database" in line
            assert "inbox" in line
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "pointed at another database or namespace" in errors[0]
        assert "billing" in errors[0]
    finally:
        broker.close()
        _drop(postgres_engine, route.table)
        _drop(mysql_engine, route.table)


def test_a_consumer_whose_database_lacks_the_table_fails_at_start(
    postgres_engine: sa.Engine, mysql_engine: sa.Engine, unique: str
) -> None:
    routing = unique_routing(unique, "billing")
    route = routing.register("invoice.requested", "billing")
    SqlRepository(postgres_engine).create_schema([route])  # the producer's side only
    consumer = Engine(
        SqlRepository(mysql_engine),
        MemoryBroker(),
        routing,
        config=fast_config(relay_services=()),
    )

    @consumer.register_handler("invoice.requested")
    def bill(event: Event, connection: sa.Connection) -> None:
        raise AssertionError("never runs")

    try:
        with pytest.raises(ConfigurationError) as caught:
            consumer.start()
        message = str(caught.value)
        assert route.table in message
        assert "mysql" in message or "mariadb" in message
        assert "inbox" in message
        assert not consumer.running
    finally:
        _drop(postgres_engine, route.table)
