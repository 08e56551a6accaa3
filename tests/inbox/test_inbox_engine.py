"""An engine consuming through an inbox, step by step, on the embedded default: two SQLite
files (the producer's and the consumer's) and the in-process broker.

Covers what the cross-database test does not drive on purpose: retries redelivered by the
broker until they succeed or go dead in the inbox, permanent failures, events with no
handler, and the checks an engine makes before it starts consuming.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.backends.sqlite import create_sqlite_engine
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError, PermanentError
from outboxkit.inbox import InboxStatus, SqlInbox
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.routing import Routing, ServiceCatalog
from tests.support.engine import fast_config


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    producer = create_sqlite_engine(f"sqlite:///{tmp_path}/producer.db")
    consumer = create_sqlite_engine(f"sqlite:///{tmp_path}/consumer.db")
    yield producer, consumer
    producer.dispose()
    consumer.dispose()


def _routing(*, inbox: bool = True) -> Routing:
    catalog = ServiceCatalog(namespace="inbox-step")
    catalog.configure("billing", inbox=inbox)
    routing = Routing(catalog)
    routing.register("invoice.requested", "billing")
    routing.register("invoice.voided", "billing")
    return routing


class Pair:
    """A producer engine on one SQLite file and a consumer engine with an inbox on another."""

    def __init__(self, producer_db: sa.Engine, consumer_db: sa.Engine, *, attempts: int = 3):
        self.routing = _routing()
        broker = MemoryBroker()
        self.producer = Engine(
            SqlRepository(producer_db),
            broker,
            self.routing,
            config=fast_config(relay_services=("billing",)),
        )
        self.inbox = SqlInbox(consumer_db, max_attempts=attempts)
        self.consumer = Engine(
            SqlRepository(consumer_db),
            broker.connect(),
            self.routing,
            config=fast_config(relay_services=()),
            inboxes={"billing": self.inbox},
        )
        self.producer.create_schema()
        self.inbox.create_schema()
        self.route = self.routing.route_of_service("billing")
        self.group = self.route.group

    def publish(self, event_type: str = "invoice.requested", **payload: object) -> str:
        return self.producer.publish(PublishRequest(event_type=event_type, payload=payload))

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.producer.run_once(receive_timeout=0.01)
            self.consumer.run_once(receive_timeout=0.05)

    def close(self) -> None:
        self.consumer.stop(timeout=5)
        self.producer.stop(timeout=5)


@pytest.fixture
def pair(databases: tuple[sa.Engine, sa.Engine]) -> Iterator[Pair]:
    made = Pair(*databases)
    yield made
    made.close()


def test_a_failed_attempt_is_redelivered_until_it_succeeds(pair: Pair) -> None:
    calls: list[int] = []

    @pair.consumer.register_handler("invoice.requested")
    def flaky(event: Event, connection: sa.Connection) -> None:
        calls.append(event.payload["n"])
        if len(calls) < 3:
            raise RuntimeError("not yet")

    event_id = pair.publish(n=1)
    pair.steps(5)
    record = pair.inbox.get(pair.group, event_id)
    assert record is not None
    assert (record.status, record.attempts) == (InboxStatus.CONSUMED, 2)
    assert calls == [1, 1, 1]
    assert pair.consumer.stats().retried == 2
    row = pair.producer.repository.get_by_event_id(pair.route, event_id)
    assert row is not None and row.status is Status.CONSUMED  # through the receipt


def test_an_event_failing_every_attempt_goes_dead_in_the_inbox_and_is_acknowledged(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    @pair.consumer.register_handler("invoice.requested")
    def broken(event: Event, connection: sa.Connection) -> None:
        calls.append(event.event_id)
        raise RuntimeError("always")

    event_id = pair.publish(n=1)
    with caplog.at_level(logging.ERROR, logger="outboxkit.inbox.consumer"):
        pair.steps(6)
    record = pair.inbox.get(pair.group, event_id)
    assert record is not None
    assert (record.status, record.attempts) == (InboxStatus.DEAD, 3)
    assert "RuntimeError: always" in (record.last_error or "")
    assert len(calls) == 3  # dead, acknowledged: never delivered again
    assert any(event_id in r.getMessage() and "dead" in r.getMessage() for r in caplog.records)
    # the consumer's receipt made the producer's row dead too, with the inbox's reason
    row = pair.producer.repository.get_by_event_id(pair.route, event_id)
    assert row is not None
    assert row.status is Status.DEAD
    assert "RuntimeError: always" in (row.last_error or "")


def test_a_lost_receipt_is_sent_again_after_the_rescue_republishes(pair: Pair) -> None:
    @pair.consumer.register_handler("invoice.requested")
    def bill(event: Event, connection: sa.Connection) -> None:
        pass

    event_id = pair.publish(n=1)
    pair.producer.run_once(receive_timeout=0.01)  # relayed
    pair.consumer.run_once(receive_timeout=0.05)  # consumed, receipt sent
    topic = f"{pair.route.topic}.receipts"
    group = f"{pair.route.group}-receipts"
    thief = pair.producer.broker.subscribe(topic, group, "thief")  # type: ignore[union-attr]
    taken = thief.receive(timeout=0.1)
    assert len(taken) == 1
    thief.ack_many(taken)  # taken and never applied: a lost receipt
    thief.close()
    row = pair.producer.repository.get_by_event_id(pair.route, event_id)
    assert row is not None and row.status is Status.PUBLISHED  # the receipt was lost
    # When: the rescue publishes it again, the inbox finds a duplicate and answers again
    assert pair.producer.repository.republish_stale(pair.route, older_than=0, limit=10) == 1
    pair.steps(3)
    row = pair.producer.repository.get_by_event_id(pair.route, event_id)
    assert row is not None and row.status is Status.CONSUMED
    assert pair.consumer.stats().duplicates == 1
    assert pair.consumer.stats().consumed == 1


def test_a_side_effect_handler_runs_once_and_its_event_is_then_a_duplicate(pair: Pair) -> None:
    sent: list[str] = []
    pair.consumer.register_handler(
        "invoice.requested", lambda event: sent.append(event.event_id), transactional=False
    )
    event_id = pair.publish(n=1)
    pair.steps(3)
    assert pair.producer.repository.republish_stale(pair.route, older_than=0, limit=10) == 0
    repository = pair.producer.repository
    table = repository.table(pair.route)  # type: ignore[attr-defined]
    due = repository.now()
    with repository.engine.begin() as conn:  # type: ignore[attr-defined]
        # published once more, as after a relay's lease ran out
        conn.execute(table.update().values(status="pending", next_retry_at=due))
    pair.steps(3)
    assert sent == [event_id]
    record = pair.inbox.get(pair.group, event_id)
    assert record is not None and record.status is InboxStatus.CONSUMED
    assert pair.consumer.stats().duplicates == 1
    row = pair.producer.repository.get_by_event_id(pair.route, event_id)
    assert row is not None and row.status is Status.CONSUMED


def test_a_permanent_error_and_a_missing_handler_go_dead_at_once(pair: Pair) -> None:
    @pair.consumer.register_handler("invoice.requested")
    def refuse(event: Event, connection: sa.Connection) -> None:
        raise PermanentError("bad invoice")

    refused = pair.publish(n=1)
    unhandled = pair.publish("invoice.voided", n=2)  # routed to billing, no handler here
    pair.steps(3)
    first = pair.inbox.get(pair.group, refused)
    second = pair.inbox.get(pair.group, unhandled)
    assert first is not None and second is not None
    assert (first.status, first.attempts) == (InboxStatus.DEAD, 0)
    assert "bad invoice" in (first.last_error or "")
    assert second.status is InboxStatus.DEAD
    assert "no handler" in (second.last_error or "")


# ---------------------------------------------------------------- checks at start


def _consumer(db: sa.Engine, routing: Routing, **kwargs: object) -> Engine:
    engine = Engine(
        SqlRepository(db), MemoryBroker(), routing, config=fast_config(relay_services=()), **kwargs
    )  # type: ignore[arg-type]
    return engine


def test_start_refuses_an_inbox_route_without_an_inbox(
    databases: tuple[sa.Engine, sa.Engine],
) -> None:
    engine = _consumer(databases[1], _routing())
    engine.register_handler("invoice.requested", lambda event, conn: None)
    with pytest.raises(ConfigurationError, match=r"consumed through an inbox.*inboxes="):
        engine.start()
    assert not engine.running


def test_start_refuses_an_inbox_the_route_does_not_announce(
    databases: tuple[sa.Engine, sa.Engine],
) -> None:
    inbox = SqlInbox(databases[1])
    inbox.create_schema()
    engine = _consumer(databases[1], _routing(inbox=False), inboxes={"billing": inbox})
    engine.register_handler("invoice.requested", lambda event, conn: None)
    with pytest.raises(ConfigurationError, match="inbox=True"):
        engine.start()


def test_start_refuses_a_missing_inbox_table(databases: tuple[sa.Engine, sa.Engine]) -> None:
    inbox = SqlInbox(databases[1], table="never_created_inbox")
    engine = _consumer(databases[1], _routing(), inboxes={"billing": inbox})
    engine.register_handler("invoice.requested", lambda event, conn: None)
    with pytest.raises(ConfigurationError, match="never_created_inbox"):
        engine.start()


def test_start_refuses_to_consume_a_service_without_handlers(
    databases: tuple[sa.Engine, sa.Engine],
) -> None:
    routing = _routing(inbox=False)
    engine = Engine(
        SqlRepository(databases[0]),
        MemoryBroker(),
        routing,
        config=fast_config(consumer_services=("billing",)),
    )
    engine.create_schema()
    with pytest.raises(ConfigurationError, match="no handler"):
        engine.start()


def test_start_refuses_an_inbox_route_whose_receipt_topic_would_be_too_long(
    databases: tuple[sa.Engine, sa.Engine],
) -> None:
    catalog = ServiceCatalog(namespace="inbox-step")
    catalog.configure("billing", topic="t" * 125, inbox=True)
    routing = Routing(catalog)
    routing.register("invoice.requested", "billing")
    engine = Engine(
        SqlRepository(databases[0]),
        MemoryBroker(),
        routing,
        config=fast_config(relay_services=("billing",), consumer_services=()),
    )
    engine.create_schema()
    with pytest.raises(ConfigurationError, match="receipts"):
        engine.start()
