"""No message stops the consumer of a service whose rows live in its own database.

Row 3 of issue #18: a message whose ``outbox_id`` is past BIGINT reached the row lock on
PostgreSQL (``NumericValueOutOfRange``), which the engine took for an outage: the consumer
paused for good. Here it is written to the route's stream with a plain ``XADD``, ahead of
genuine events, and the engine's threads must handle every genuine one, on PostgreSQL and
MariaDB.

Then hypothesis plays a writer of the broker against the real Redis and the real
Kafka-protocol broker: arbitrary bytes, arbitrary JSON, envelopes with any field wrong
(naming real rows among them) and the known loop stoppers go to the topic with a plain
client, a genuine event follows, and the consumer's steps must handle it without raising,
every row the garbage named unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outboxkit.backends import SqlRepository
from outboxkit.broker import Delivery, Subscription
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.engine import Engine
from outboxkit.messages import Event, Outcome, PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay, RelayConfig
from outboxkit.routing import Route
from tests.support.engine import fast_config, orders_routing, wait_for
from tests.support.hostile import (
    Writer,
    broker_and_writer,
    envelope,
    garbage,
    open_bystanders,
    receive_until,
    xadd,
)

GENUINE = 10

OUT_OF_RANGE = {
    "outbox_id-2**63": 2**63,
    "outbox_id-2**64": 2**64,
    "outbox_id-10**30": 10**30,
}


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("database", ["postgres", "mysql"])
@pytest.mark.parametrize("outbox_id", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_an_outbox_id_past_bigint_does_not_stop_the_consumer(
    request: pytest.FixtureRequest, database: str, outbox_id: int, redis_url: str, unique: str
) -> None:
    # Given: an engine relaying and consuming one service on its own database
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    routing = orders_routing(unique)
    route = routing.route_of("order.placed")
    engine = Engine(
        SqlRepository(db), RedisStreamsBroker.from_url(redis_url), routing, config=fast_config()
    )
    handled: list[str] = []
    engine.register_handler("order.placed", lambda event, _conn: handled.append(event.event_id))
    engine.create_schema()
    try:
        # When: a message naming a row id past BIGINT comes first, then genuine events
        xadd(
            redis_url,
            route.topic,
            [
                envelope(
                    outbox_id=outbox_id,
                    event_id="e-big",
                    event_type="order.placed",
                    service_name="orders",
                )
            ],
        )
        published = [
            engine.publish(PublishRequest(event_type="order.placed", payload={"n": n}))
            for n in range(GENUINE)
        ]
        engine.start()
        # Then: every genuine event is handled and its row consumed
        wait_for(
            lambda: engine.repository.count_by_status(route)[Status.CONSUMED] == GENUINE,
            timeout=20,
            what="every genuine event consumed",
        )
    finally:
        engine.stop(timeout=10)
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))
    assert sorted(handled) == sorted(published)


# --------------------------------------------------------------------------- hypothesis


@attrs.define
class Rig:
    """One service consumed on its own PostgreSQL database, through a real broker: a relay
    for the genuine events, a consumer and its subscription kept across examples, and rows
    no message may touch."""

    repository: SqlRepository
    route: Route
    publisher: Publisher
    relay: Relay
    consumer: Consumer
    subscription: Subscription
    writer: Writer
    handled: list[str]
    bystanders: dict[int, str]

    def snapshot(self) -> list[object]:
        return [self.repository.get(self.route, row_id) for row_id in self.bystanders]


@pytest.fixture(params=["redis", "kafka"])
def rig(request: pytest.FixtureRequest, postgres_engine: sa.Engine, unique: str) -> Iterator[Rig]:
    routing = orders_routing(unique)
    route = routing.route_of("order.placed")
    repository = SqlRepository(postgres_engine)
    repository.create_schema([route])
    publisher = Publisher(repository, routing)
    bystanders = open_bystanders(repository, route, publisher, "order.placed")
    handled: list[str] = []
    registry = HandlerRegistry(routing)
    registry.register("order.placed", lambda event, _conn: handled.append(event.event_id))
    with broker_and_writer(request, request.param) as (broker, writer):
        broker.ensure_topic(route.topic, route.group)
        subscription = broker.subscribe(route.topic, route.group, f"hostile-{unique}")
        consumer = Consumer(
            OutboxLedger(repository, route),
            registry,
            config=ConsumerConfig(receive_timeout=0.2, prefetch=False),
        )
        relay = Relay(repository, broker, route, config=RelayConfig(prefetch=False))
        try:
            yield Rig(
                repository,
                route,
                publisher,
                relay,
                consumer,
                subscription,
                writer,
                handled,
                bystanders,
            )
        finally:
            relay.close()
            consumer.close()
            subscription.close()
            with postgres_engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {route.table}"))
            repository.close()


#: A few dozen examples per broker keep the suite's minutes in check; each one is a real
#: round trip through the broker and the database.
HOSTILE = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _envelope_fields(rig: Rig) -> dict[str, st.SearchStrategy[Any]]:
    ids = list(rig.bystanders)
    return {
        "envelope_version": st.just(1),
        "outbox_id": st.sampled_from(ids),
        "event_id": st.uuids().map(lambda u: f"forged-{u}"),
        "event_type": st.sampled_from(["order.placed", "order.unknown"]),
        "service_name": st.sampled_from(["orders", "billing"]),
        "payload": st.just({}),
        "attempt": st.integers(),
        "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
        "correlation_id": st.text(max_size=20),
    }


@pytest.mark.postgres
@pytest.mark.fuzz
@HOSTILE
@given(data=st.data())
def test_the_consumer_handles_a_genuine_event_after_any_garbage(
    rig: Rig, data: st.DataObject
) -> None:
    # Given: whatever a writer of the broker sends first
    messages = data.draw(garbage(_envelope_fields(rig)), label="garbage")
    before = rig.snapshot()
    rig.writer.write(rig.route.topic, messages)
    # When: a genuine event follows, relayed as usual
    event_id = rig.publisher.publish(PublishRequest(event_type="order.placed", payload={}))
    assert rig.relay.run_once().published == 1
    # Then: the consumer (any exception fails the test) handles it, and no row the garbage
    # named has changed
    receive_until(
        lambda: rig.consumer.run_once(rig.subscription),
        lambda: event_id in rig.handled,
        timeout=30,
        what="the genuine event after the garbage",
    )
    assert rig.snapshot() == before
    row = rig.repository.get_by_event_id(rig.route, event_id)
    assert row is not None and row.status is Status.CONSUMED


# --------------------------------------------------------------------------- last_error


@pytest.mark.postgres
@pytest.mark.parametrize("poison", ["a\x00b", "a\ud800b"], ids=["NUL", "lone-surrogate"])
def test_a_failure_quoting_what_no_database_stores_is_recorded_as_a_retry(
    postgres_engine: sa.Engine, unique: str, poison: str
) -> None:
    # Given: a handler whose error quotes the payload, and a delivery of a sent row whose
    # payload holds what PostgreSQL cannot store (a NUL; a lone surrogate no driver encodes)
    routing = orders_routing(unique)
    route = routing.route_of("order.placed")
    repository = SqlRepository(postgres_engine)
    repository.create_schema([route])
    event_id = Publisher(repository, routing).publish(
        PublishRequest(event_type="order.placed", payload={})
    )
    row = repository.get_by_event_id(route, event_id)
    assert row is not None
    registry = HandlerRegistry(routing)

    def ship(event: Event, connection: sa.Connection) -> None:
        raise ValueError(f"no such sku: {event.payload['sku']}")

    registry.register("order.placed", ship)
    consumer = Consumer(OutboxLedger(repository, route), registry)
    value = envelope(
        outbox_id=row.id,
        event_id=event_id,
        event_type="order.placed",
        service_name="orders",
        payload={"sku": poison},
    )
    delivery = Delivery(topic=route.topic, key="k", value=value, headers={}, receipt=None)
    try:
        # When: the consumer handles it (a raise here would come back with every delivery)
        outcome = consumer.handle(delivery)
        # Then: the failed attempt is recorded, what cannot be stored replaced
        assert outcome is Outcome.RETRY
        failed = repository.get(route, row.id)
        assert failed is not None and "no such sku: a\ufffdb" in (failed.last_error or "")
    finally:
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {route.table}"))
        repository.close()
