"""End to end over {PostgreSQL, MariaDB} x {Kafka (Tansu), Redis Streams}.

Each test publishes in a business transaction, runs real engine threads and checks the
business effect and the outbox row, on real servers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker, BrokerMessage
from outboxkit.engine import Engine, EngineConfig
from outboxkit.errors import PermanentError
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.routing import Routing
from outboxkit.wire.envelope import broker_headers, encode_envelope, envelope_from_row
from tests.support.engine import (
    business_table,
    count_rows,
    fast_config,
    unique_routing,
    wait_for,
)

COMBOS = [
    ("postgres", "kafka"),
    ("postgres", "redis"),
    ("mysql", "kafka"),
    ("mysql", "redis"),
]


@attrs.define
class Stack:
    """One database and one broker, with factories for engines and brokers of this test."""

    db: sa.Engine
    repository: SqlRepository
    make_broker: Callable[[], Broker]
    routing: Routing
    table: sa.Table
    engines: list[Engine] = attrs.field(factory=list)

    def engine(self, config: EngineConfig | None = None) -> Engine:
        engine = Engine(
            self.repository, self.make_broker(), self.routing, config=config or fast_config()
        )
        self.engines.append(engine)
        return engine

    def publish(self, engine: Engine, request: PublishRequest, *, commit: bool = True) -> None:
        """Insert a business row and publish ``request`` in one transaction."""
        with self.db.connect() as conn, conn.begin() as tx:
            conn.execute(
                self.table.insert().values(event_id=f"order-{request.event_id}", note="order")
            )
            engine.publish(request, connection=conn)
            if not commit:
                tx.rollback()

    def row(self, service: str, event_id: str) -> Any:
        return self.repository.get_by_event_id(self.routing.route_of_service(service), event_id)

    def status(self, service: str, event_id: str) -> Status | None:
        row = self.row(service, event_id)
        return None if row is None else row.status


def _broker_factory(request: pytest.FixtureRequest, kind: str, unique: str) -> Callable[[], Broker]:
    if kind == "kafka":
        from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

        bootstrap = request.getfixturevalue("kafka_bootstrap")
        return lambda: KafkaBroker(KafkaConfig.from_bootstrap(bootstrap))
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    url = request.getfixturevalue("redis_url")
    return lambda: RedisStreamsBroker.from_url(url)


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def stack(request: pytest.FixtureRequest, unique: str) -> Iterator[Stack]:
    database, broker_kind = request.param
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    routing = unique_routing(unique, "orders", "billing")
    routing.register("order.placed", "orders")
    routing.register("order.cancelled", "orders")
    routing.register("invoice.requested", "billing")
    metadata = sa.MetaData()
    table = business_table(metadata, f"t_{unique}_effects")
    metadata.create_all(db)
    repository = SqlRepository(db)
    repository.create_schema(routing.catalog.route(s) for s in ("orders", "billing"))
    result = Stack(
        db=db,
        repository=repository,
        make_broker=_broker_factory(request, broker_kind, unique),
        routing=routing,
        table=table,
    )
    yield result
    for engine in result.engines:
        engine.stop(timeout=10)
    metadata.drop_all(db)
    with db.begin() as conn:
        for service in ("orders", "billing"):
            conn.execute(sa.text(f"DROP TABLE {routing.catalog.route(service).table}"))
    if broker_kind == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.delete(*(routing.catalog.route(s).topic for s in ("orders", "billing")))
        client.close()


def _effect(stack: Stack, note: str = "shipped") -> Callable[[Event, Connection], None]:
    def handler(event: Event, connection: Connection) -> None:
        connection.execute(stack.table.insert().values(event_id=event.event_id, note=note))

    return handler


def _effects(stack: Stack, event_id: str) -> int:
    with stack.db.connect() as conn:
        query = sa.select(sa.func.count()).where(stack.table.c.event_id == event_id)
        return int(conn.execute(query).scalar_one())


def test_committed_event_reaches_its_handler_and_is_consumed(stack: Stack) -> None:
    engine = stack.engine()
    engine.register_handler("order.placed", _effect(stack))
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={"n": 1})

    stack.publish(engine, request)

    wait_for(lambda: stack.status("orders", request.event_id) is Status.CONSUMED, what="consumed")
    assert _effects(stack, request.event_id) == 1
    row = stack.row("orders", request.event_id)
    assert row.consumed_at is not None and row.retry_count == 0


def test_rolled_back_event_is_never_delivered(stack: Stack) -> None:
    engine = stack.engine()
    engine.register_handler("order.placed", _effect(stack))
    engine.start()
    rolled_back = PublishRequest(event_type="order.placed", message_key="c1", payload={})
    committed = PublishRequest(event_type="order.placed", message_key="c1", payload={})

    stack.publish(engine, rolled_back, commit=False)
    stack.publish(engine, committed)

    # The committed event, published after, arriving proves the relay ran past the rollback.
    wait_for(lambda: stack.status("orders", committed.event_id) is Status.CONSUMED)
    assert stack.row("orders", rolled_back.event_id) is None
    assert _effects(stack, rolled_back.event_id) == 0
    assert count_rows(stack.db, stack.table) == 2  # one business row + one effect


def test_handler_failing_twice_then_succeeding_is_consumed_on_the_third_attempt(
    stack: Stack,
) -> None:
    attempts: list[int] = []

    def flaky(event: Event, connection: Connection) -> None:
        attempts.append(event.attempt)
        connection.execute(stack.table.insert().values(event_id=event.event_id, note="try"))
        if len(attempts) < 3:
            raise RuntimeError(f"transient failure {len(attempts)}")

    engine = stack.engine()
    engine.register_handler("order.placed", flaky)
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={})

    stack.publish(engine, request)

    wait_for(lambda: stack.status("orders", request.event_id) is Status.CONSUMED)
    assert attempts == [1, 2, 3]
    assert _effects(stack, request.event_id) == 1  # failed attempts rolled back their insert
    assert stack.row("orders", request.event_id).retry_count == 2


def test_handler_that_always_fails_goes_dead_after_max_retry(stack: Stack) -> None:
    calls: list[int] = []

    def broken(event: Event, connection: Connection) -> None:
        calls.append(event.attempt)
        raise RuntimeError("downstream is gone")

    engine = stack.engine()  # fast_config: max_retry=4
    engine.register_handler("order.placed", broken)
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={})

    stack.publish(engine, request)

    wait_for(lambda: stack.status("orders", request.event_id) is Status.DEAD, what="dead")
    row = stack.row("orders", request.event_id)
    assert row.retry_count == 4 and row.max_retry == 4
    assert calls == [1, 2, 3, 4]
    assert "downstream is gone" in (row.last_error or "")


def test_permanent_error_goes_dead_at_once(stack: Stack) -> None:
    calls: list[int] = []

    def reject(event: Event, connection: Connection) -> None:
        calls.append(event.attempt)
        connection.execute(stack.table.insert().values(event_id=event.event_id, note="no"))
        raise PermanentError("amount must be positive")

    engine = stack.engine()
    engine.register_handler("order.placed", reject)
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={})

    stack.publish(engine, request)

    wait_for(lambda: stack.status("orders", request.event_id) is Status.DEAD)
    row = stack.row("orders", request.event_id)
    assert calls == [1]
    assert row.retry_count == 0
    assert "amount must be positive" in (row.last_error or "")
    assert _effects(stack, request.event_id) == 0  # the handler's write was rolled back


def test_duplicate_delivery_has_one_effect(stack: Stack) -> None:
    calls: list[str] = []

    def once(event: Event, connection: Connection) -> None:
        calls.append(event.event_id)
        connection.execute(stack.table.insert().values(event_id=event.event_id, note="x"))

    engine = stack.engine()
    engine.register_handler("order.placed", once)
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={})
    stack.publish(engine, request)
    wait_for(lambda: stack.status("orders", request.event_id) is Status.CONSUMED)

    # The broker delivers the same event again (a relay that died after sending, say).
    row = stack.row("orders", request.event_id)
    envelope = envelope_from_row(row, published_at=datetime.now(timezone.utc))
    message = BrokerMessage(
        topic=row.topic,
        key=row.message_key,
        value=encode_envelope(envelope),
        headers=broker_headers(envelope),
    )
    broker = stack.make_broker()
    try:
        assert broker.publish([message, message])[0].ok
    finally:
        broker.close()

    wait_for(lambda: engine.stats().duplicates >= 2, what="two duplicate deliveries")
    assert calls == [request.event_id]
    assert _effects(stack, request.event_id) == 1


def test_two_services_use_separate_tables_topics_and_groups(stack: Stack) -> None:
    seen: dict[str, list[str]] = {"orders": [], "billing": []}

    def on_order(event: Event, connection: Connection) -> None:
        seen["orders"].append(event.event_id)
        assert event.service_name == "orders"
        engine.publish(
            PublishRequest(
                event_type="invoice.requested",
                message_key=event.message_key,
                payload={"for": event.event_id},
                event_id=f"inv-{event.event_id}",
            ),
            connection=connection,
        )

    def on_invoice(event: Event, connection: Connection) -> None:
        seen["billing"].append(event.event_id)
        assert event.service_name == "billing"
        connection.execute(stack.table.insert().values(event_id=event.event_id, note="invoice"))

    engine = stack.engine()
    engine.register_handler("order.placed", on_order)
    engine.register_handler("invoice.requested", on_invoice)
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={})

    stack.publish(engine, request)

    invoice_id = f"inv-{request.event_id}"
    wait_for(lambda: stack.status("billing", invoice_id) is Status.CONSUMED)
    orders, billing = (stack.routing.route_of_service(s) for s in ("orders", "billing"))
    assert {orders.table, orders.topic, orders.group}.isdisjoint(
        {billing.table, billing.topic, billing.group}
    )
    assert stack.row("orders", invoice_id) is None  # the invoice lives in billing's table only
    assert stack.row("billing", request.event_id) is None
    assert stack.row("billing", invoice_id).topic == billing.topic
    assert seen == {"orders": [request.event_id], "billing": [invoice_id]}


def test_two_engines_on_one_service_split_the_work_without_double_effects(stack: Stack) -> None:
    handled_by: dict[str, list[str]] = {"a": [], "b": []}
    lock = threading.Lock()

    def handler_for(name: str) -> Callable[[Event, Connection], None]:
        def handle(event: Event, connection: Connection) -> None:
            with lock:
                handled_by[name].append(event.event_id)
            connection.execute(stack.table.insert().values(event_id=event.event_id, note=name))

        return handle

    first = stack.engine(fast_config(consumer_name="member-a"))
    second = stack.engine(fast_config(consumer_name="member-b"))
    first.register_handler("order.placed", handler_for("a"))
    second.register_handler("order.placed", handler_for("b"))
    first.start()
    second.start()
    requests = [
        PublishRequest(event_type="order.placed", message_key=f"k{i % 6}", payload={"i": i})
        for i in range(60)
    ]
    with stack.db.begin() as conn:
        first.publish_many(requests, connection=conn)

    def all_consumed() -> bool:
        counts = stack.repository.count_by_status(stack.routing.route_of_service("orders"))
        return counts[Status.CONSUMED] == len(requests)

    wait_for(all_consumed, timeout=60, what="all 60 events consumed")
    ids = {r.event_id for r in requests}
    handled = handled_by["a"] + handled_by["b"]
    assert set(handled) == ids
    assert len(handled) == len(ids), "an event took effect twice"
    assert count_rows(stack.db, stack.table) == len(ids)
    # A relay counts its batch once run_once returns, which can be after a fast consumer
    # has already consumed the whole batch.
    wait_for(
        lambda: first.stats().published + second.stats().published >= len(requests),
        timeout=10,
        what="both relays' published counts",
    )


def test_stop_lets_an_in_flight_handler_finish(stack: Stack) -> None:
    started = threading.Event()

    def slow(event: Event, connection: Connection) -> None:
        started.set()
        time.sleep(1.0)
        connection.execute(stack.table.insert().values(event_id=event.event_id, note="slow"))

    engine = stack.engine()
    engine.register_handler("order.placed", slow)
    engine.start()
    request = PublishRequest(event_type="order.placed", message_key="c1", payload={})
    stack.publish(engine, request)
    assert started.wait(30), "handler never started"

    finished = engine.stop(timeout=15)

    assert finished is True
    assert stack.status("orders", request.event_id) is Status.CONSUMED
    assert _effects(stack, request.event_id) == 1
    assert engine.stop(timeout=1) is True  # idempotent
