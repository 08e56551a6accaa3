"""Engine behaviour on the embedded default (SQLite + in-process broker), step by step.

These use ``run_once`` and the relay/consumer single steps, so they are deterministic; the
same behaviours run on real servers with real threads in ``test_end_to_end.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import BrokerMessage, Delivery
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.engine import Engine
from outboxkit.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateHandlerError,
    UnknownEventTypeError,
)
from outboxkit.messages import Event, Outcome, PublishRequest, Status
from outboxkit.relay.relay import Relay, RelayConfig
from outboxkit.routing import Routing
from outboxkit.store import Repository
from outboxkit.wire.envelope import dumps
from tests.support.engine import (
    ObservedRepository,
    business_table,
    count_rows,
    fast_config,
    unique_routing,
    wait_for,
)


@pytest.fixture
def routing(unique: str) -> Routing:
    routing = unique_routing(unique, "orders", "billing")
    routing.register("order.placed", "orders")
    routing.register("order.unhandled", "orders")
    routing.register("invoice.requested", "billing")
    return routing


@pytest.fixture
def repository(sqlite_engine: sa.Engine, routing: Routing) -> SqlRepository:
    repository = SqlRepository(sqlite_engine)
    repository.create_schema(routing.routes())
    return repository


@pytest.fixture
def table(sqlite_engine: sa.Engine) -> sa.Table:
    metadata = sa.MetaData()
    table = business_table(metadata, "effects")
    metadata.create_all(sqlite_engine)
    return table


@pytest.fixture
def engine(repository: SqlRepository, routing: Routing) -> Iterator[Engine]:
    engine = Engine(repository, MemoryBroker(), routing, config=fast_config())
    yield engine
    engine.stop(timeout=5)


def _record(table: sa.Table) -> object:
    def handler(event: Event, connection: Connection) -> None:
        connection.execute(table.insert().values(event_id=event.event_id, note="done"))

    return handler


def _status(repository: Repository, routing: Routing, event_id: str) -> Status | None:
    row = repository.get_by_event_id(routing.route_of("order.placed"), event_id)
    return None if row is None else row.status


# ---------------------------------------------------------------- registry


def test_a_second_handler_for_one_event_type_is_an_error(engine: Engine) -> None:
    engine.register_handler("order.placed", lambda event, conn: None)

    with pytest.raises(DuplicateHandlerError, match=r"order\.placed"):
        engine.register_handler("order.placed", lambda event, conn: None)


def test_a_handler_for_an_unrouted_event_type_is_an_error_at_registration(
    engine: Engine,
) -> None:
    with pytest.raises(UnknownEventTypeError, match=r"nobody\.routes\.this"):
        engine.register_handler("nobody.routes.this", lambda event, conn: None)


def test_register_handler_works_as_a_decorator(engine: Engine) -> None:
    @engine.register_handler("order.placed")
    def handle(event: Event, connection: Connection) -> None:
        return None

    spec = engine.registry.get("order.placed")
    assert spec is not None and spec.func is handle and spec.service == "orders"


# ---------------------------------------------------------------- single steps


def test_run_once_moves_a_committed_event_through_relay_and_handler(
    engine: Engine, sqlite_engine: sa.Engine, table: sa.Table, routing: Routing
) -> None:
    engine.register_handler("order.placed", _record(table))
    request = PublishRequest(event_type="order.placed", message_key="k", payload={"n": 1})
    with sqlite_engine.begin() as conn:
        engine.publish(request, connection=conn)

    work = engine.run_once(receive_timeout=0.5)

    assert work == 2  # one row published, one delivery handled
    assert _status(engine.repository, routing, request.event_id) is Status.CONSUMED
    assert count_rows(sqlite_engine, table) == 1
    assert engine.stats().consumed == 1 and engine.stats().published == 1


def test_an_event_type_without_a_local_handler_goes_dead_with_the_reason(
    engine: Engine, routing: Routing
) -> None:
    engine.register_handler("order.placed", lambda event, conn: None)
    request = PublishRequest(event_type="order.unhandled", payload={})
    engine.publish(request)

    engine.run_once(receive_timeout=0.5)

    row = engine.repository.get_by_event_id(routing.route_of("order.unhandled"), request.event_id)
    assert row is not None and row.status is Status.DEAD
    assert "no handler registered in service orders: order.unhandled" in (row.last_error or "")


def _delivery(value: bytes) -> Delivery:
    return Delivery(topic="t", key="k", value=value, headers={}, receipt=None)


def test_an_undecodable_message_naming_its_row_and_event_marks_that_row_dead(
    engine: Engine, routing: Routing
) -> None:
    engine.register_handler("order.placed", lambda event, conn: None)
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)
    route = routing.route_of("order.placed")
    row = engine.repository.get_by_event_id(route, request.event_id)
    assert row is not None
    consumer = Consumer(OutboxLedger(engine.repository, route), engine.registry)
    garbled = dumps(  # no type
        {
            "outbox_id": row.id,
            "event_id": request.event_id,
            "service_name": "orders",
            "payload": {},
        }
    )

    outcome = consumer.handle(_delivery(garbled.encode()))

    assert outcome is Outcome.DEAD
    dead = engine.repository.get(route, row.id)
    assert dead is not None and dead.status is Status.DEAD
    assert "lacks event type" in (dead.last_error or "")


def test_an_unidentifiable_message_is_skipped_and_the_consumer_goes_on(
    engine: Engine, routing: Routing, sqlite_engine: sa.Engine, table: sa.Table
) -> None:
    engine.register_handler("order.placed", _record(table))
    route = routing.route_of("order.placed")
    broker = engine.broker
    assert broker is not None
    broker.publish([BrokerMessage(topic=route.topic, key="k", value=b"\xff not json")])
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)

    engine.run_once(receive_timeout=0.5)
    engine.run_once(receive_timeout=0.2)

    assert engine.stats().skipped == 1
    assert _status(engine.repository, routing, request.event_id) is Status.CONSUMED


def test_a_foreign_service_event_on_our_topic_is_skipped_untouched(
    engine: Engine, routing: Routing
) -> None:
    engine.register_handler("order.placed", lambda event, conn: None)
    consumer = Consumer(
        OutboxLedger(engine.repository, routing.route_of("order.placed")), engine.registry
    )
    foreign = dumps(
        {"outbox_id": 1, "event_type": "order.placed", "service_name": "billing", "payload": {}}
    )

    assert consumer.handle(_delivery(foreign.encode())) is Outcome.SKIPPED


def test_a_side_effect_handler_runs_outside_the_transaction_then_marks_consumed(
    engine: Engine, routing: Routing
) -> None:
    calls: list[str] = []
    engine.register_handler(
        "order.placed", lambda event: calls.append(event.event_id), transactional=False
    )
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)

    engine.run_once(receive_timeout=0.5)

    assert calls == [request.event_id]
    assert _status(engine.repository, routing, request.event_id) is Status.CONSUMED


# ---------------------------------------------------------------- relay


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_broker_pauses_the_relay_without_counting_a_retry(
    repository: SqlRepository, routing: Routing, engine: Engine
) -> None:
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)
    route = routing.route_of("order.placed")
    down = RedisStreamsBroker.from_url(f"redis://127.0.0.1:{_closed_port()}/0")
    relay = Relay(repository, down, route, config=RelayConfig(outage_backoff=0.2))
    try:
        with pytest.raises(BrokerUnavailableError):
            relay.run_once()
    finally:
        down.close()

    row = repository.get_by_event_id(route, request.event_id)
    assert row is not None
    assert row.status is Status.PENDING
    assert row.retry_count == 0 and row.last_error is None
    assert row.lease_token is None
    assert repository.claim_due(route, limit=10, lease_seconds=5).messages == []  # paused


def test_a_row_published_but_never_consumed_is_published_again(
    repository: SqlRepository, routing: Routing
) -> None:
    broker = MemoryBroker()
    route = routing.route_of("order.placed")
    engine = Engine(repository, broker, routing, config=fast_config())
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)
    relay = Relay(repository, broker, route, config=RelayConfig(republish_after=0.0))
    assert relay.run_once().published == 1  # nobody consumes: the message is "lost"

    assert relay.republish_stale() == 1
    assert relay.run_once().published == 1

    row = repository.get_by_event_id(route, request.event_id)
    assert row is not None and row.status is Status.PUBLISHED and row.retry_count == 1
    broker.close()


# ---------------------------------------------------------------- lifecycle and modes


def test_stop_is_idempotent_and_start_twice_is_an_error(engine: Engine) -> None:
    engine.register_handler("order.placed", lambda event, conn: None)
    engine.start()
    with pytest.raises(ConfigurationError):
        engine.start()

    assert engine.stop(timeout=5) is True
    assert engine.stop(timeout=5) is True
    assert not any(engine.thread_states().values())


def test_disabled_engine_runs_the_local_handler_in_the_callers_transaction(
    repository: SqlRepository, routing: Routing, sqlite_engine: sa.Engine, table: sa.Table
) -> None:
    engine = Engine(repository, None, routing, config=fast_config(enabled=False))
    engine.register_handler("order.placed", _record(table))
    engine.start()  # starts nothing
    committed = PublishRequest(event_type="order.placed", payload={})
    rolled_back = PublishRequest(event_type="order.placed", payload={})

    with sqlite_engine.begin() as conn:
        engine.publish(committed, connection=conn)
    with sqlite_engine.connect() as conn, conn.begin() as tx:
        engine.publish(rolled_back, connection=conn)
        tx.rollback()

    assert engine.thread_states() == {}
    assert count_rows(sqlite_engine, table) == 1  # handler ran inline; rollback undid one
    route = routing.route_of("order.placed")
    assert repository.get_by_event_id(route, committed.event_id) is None  # no outbox row
    with pytest.raises(ConfigurationError, match="no handler"):
        engine.publish(PublishRequest(event_type="invoice.requested", payload={}))
    assert engine.stop() is True


def test_an_enabled_engine_needs_a_broker(repository: SqlRepository, routing: Routing) -> None:
    with pytest.raises(ConfigurationError, match="broker"):
        Engine(repository, None, routing)


def test_threads_are_named_after_role_and_service(engine: Engine) -> None:
    engine.register_handler("order.placed", lambda event, conn: None)
    engine.start()

    names = sorted(engine.thread_states())

    assert names == ["outboxkit-consumer-orders-0", "outboxkit-relay-orders-0"]


def test_committing_a_publish_wakes_the_relay_without_waiting_for_its_poll(
    repository: SqlRepository, routing: Routing, sqlite_engine: sa.Engine, table: sa.Table
) -> None:
    # Every poll after an empty claim waits 60 s (not the default 0.01 s doubling up)
    slow_poll = fast_config(
        relay=RelayConfig(idle_interval=60.0, min_poll_interval=60.0, republish_after=None)
    )
    observed = ObservedRepository(sqlite_engine)
    engine = Engine(observed, MemoryBroker(), routing, config=slow_poll)
    engine.register_handler("order.placed", _record(table))
    engine.start()
    try:
        # the relay found nothing and is now in its 60 s idle wait (waited for, not slept)
        assert observed.empty_claim.wait(30), "the relay never made its first claim"
        request = PublishRequest(event_type="order.placed", payload={})
        with sqlite_engine.begin() as conn:
            engine.publish(request, connection=conn)

        wait_for(
            lambda: _status(repository, routing, request.event_id) is Status.CONSUMED,
            timeout=10,
            what="consumed long before the 60 s poll",
        )
    finally:
        assert engine.stop(timeout=5)
