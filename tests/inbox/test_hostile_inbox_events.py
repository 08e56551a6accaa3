"""An event an inbox cannot hold is refused before any SQL runs, and the consumer goes on.

Row 2 of issue #18: an event whose ``event_id`` or ``event_type`` is longer than the inbox's
columns, or whose ``outbox_id`` is past BIGINT, made the inbox ``INSERT`` fail; the engine
took that for a database outage and handled nothing after it. Here such events are written
to the route's stream with a plain ``XADD``, ahead of genuine events published and relayed
by a producer engine; the consumer's threads must handle every genuine event, on
PostgreSQL and MariaDB.

Then hypothesis plays a writer of the broker against the real Redis and the real
Kafka-protocol broker: arbitrary bytes and JSON, envelopes with any field wrong (naming
events the inbox has finished among them) and the known loop stoppers go to the topic with
a plain client, a genuine event follows, and the inbox consumer's steps must handle it
without raising, every finished inbox row unchanged.
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
from outboxkit.broker import Subscription
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.engine import Engine
from outboxkit.inbox import InboxItem, InboxStatus, SqlInbox
from outboxkit.inbox.ledger import InboxLedger
from outboxkit.inbox.receipts import ReceiptSender
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay, RelayConfig
from outboxkit.routing import Route, Routing, ServiceCatalog
from tests.support.engine import fast_config, wait_for
from tests.support.hostile import (
    Writer,
    broker_and_writer,
    envelope,
    garbage,
    receive_until,
    xadd,
)

GENUINE = 20
TOO_LONG = "x" * 65

UNFIT = {
    "event_id-65-characters": {"outbox_id": 1, "event_id": TOO_LONG},
    "event_type-65-characters": {"outbox_id": 1, "event_id": "e-type", "event_type": TOO_LONG},
    "outbox_id-2**63": {"outbox_id": 2**63, "event_id": "e-big"},
}


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("database", ["postgres", "mysql"])
@pytest.mark.parametrize("fields", UNFIT.values(), ids=UNFIT.keys())
def test_an_event_the_inbox_cannot_hold_does_not_stop_the_inbox_consumer(
    request: pytest.FixtureRequest,
    database: str,
    fields: dict[str, object],
    redis_url: str,
    unique: str,
) -> None:
    # Given: a producer and a consumer of an inbox route, on one database server
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    catalog = ServiceCatalog(namespace=f"hi-{unique}")
    catalog.configure("billing", table=f"hi_{unique}_billing_outbox", inbox=True)
    routing = Routing(catalog)
    route = routing.register("invoice.requested", "billing")
    inbox = SqlInbox(db, table=f"hi_{unique}_inbox")
    producer = Engine(
        SqlRepository(db),
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(relay_services=("billing",), consumer_services=()),
    )
    consumer = Engine(
        SqlRepository(db),
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(relay_services=()),
        inboxes={"billing": inbox},
    )
    handled: list[str] = []
    consumer.register_handler(
        "invoice.requested", lambda event, _conn: handled.append(event.event_id)
    )
    producer.create_schema()
    inbox.create_schema()
    try:
        # When: an event the inbox cannot hold comes first on the stream, then genuine ones
        unfit = {"event_type": "invoice.requested", "service_name": "billing", **fields}
        xadd(redis_url, route.topic, [envelope(**unfit)])
        published = [
            producer.publish(PublishRequest(event_type="invoice.requested", payload={"n": n}))
            for n in range(GENUINE)
        ]
        consumer.start()
        producer.start()
        # Then: every genuine event is handled, and its receipt makes its row consumed
        wait_for(
            lambda: inbox.count_by_status(route.group)[InboxStatus.CONSUMED] == GENUINE,
            timeout=20,
            what="every genuine event consumed into the inbox",
        )
        wait_for(
            lambda: producer.repository.count_by_status(route)[Status.CONSUMED] == GENUINE,
            timeout=20,
            what="every producer row consumed through its receipt",
        )
        assert sorted(handled) == sorted(published)
        assert inbox.count_by_status(route.group)[InboxStatus.FAILED] == 0
    finally:
        consumer.stop(timeout=10)
        producer.stop(timeout=10)
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {inbox.table_name}"))


# --------------------------------------------------------------------------- hypothesis


@attrs.define
class Rig:
    """An inbox route: a producer on PostgreSQL whose relay sends the genuine events, an
    inbox consumer on MariaDB (its consumer and subscription kept across examples), and
    inbox rows already final, which no message may change."""

    publisher: Publisher
    relay: Relay
    inbox: SqlInbox
    route: Route
    consumer: Consumer
    subscription: Subscription
    writer: Writer
    handled: list[str]
    finished: list[str]

    def snapshot(self) -> list[object]:
        return [self.inbox.get(self.route.group, event_id) for event_id in self.finished]


@pytest.fixture(params=["redis", "kafka"])
def rig(
    request: pytest.FixtureRequest,
    postgres_engine: sa.Engine,
    mysql_engine: sa.Engine,
    unique: str,
) -> Iterator[Rig]:
    catalog = ServiceCatalog(namespace=f"hf-{unique}")
    catalog.configure("billing", table=f"hf_{unique}_billing_outbox", inbox=True)
    routing = Routing(catalog)
    route = routing.register("invoice.requested", "billing")
    repository = SqlRepository(postgres_engine)
    repository.create_schema([route])
    inbox = SqlInbox(mysql_engine, table=f"hf_{unique}_inbox")
    inbox.create_schema()
    finished = ["finished-consumed", "finished-dead"]
    item = InboxItem(event_id=finished[0], event_type="invoice.requested", service="billing")
    assert inbox.mark_consumed(route.group, item)
    item = attrs.evolve(item, event_id=finished[1])
    assert inbox.mark_dead(route.group, item, reason="no handler")
    handled: list[str] = []
    registry = HandlerRegistry(routing)
    registry.register("invoice.requested", lambda event, _conn: handled.append(event.event_id))
    with broker_and_writer(request, request.param) as (broker, writer):
        broker.ensure_topic(route.topic, route.group)
        subscription = broker.subscribe(route.topic, route.group, f"hostile-{unique}")
        ledger = InboxLedger(inbox, route, receipts=ReceiptSender(broker, route))
        consumer = Consumer(
            ledger, registry, config=ConsumerConfig(receive_timeout=0.2, prefetch=False)
        )
        relay = Relay(repository, broker, route, config=RelayConfig(prefetch=False))
        try:
            yield Rig(
                Publisher(repository, routing),
                relay,
                inbox,
                route,
                consumer,
                subscription,
                writer,
                handled,
                finished,
            )
        finally:
            relay.close()
            consumer.close()
            subscription.close()
            with postgres_engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {route.table}"))
            with mysql_engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {inbox.table_name}"))
            repository.close()


HOSTILE = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _envelope_fields(rig: Rig) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "envelope_version": st.just(1),
        "outbox_id": st.integers(1, 10**6),
        "event_id": st.sampled_from(rig.finished) | st.uuids().map(str),
        "event_type": st.sampled_from(["invoice.requested", "invoice.unknown"]),
        "service_name": st.sampled_from(["billing", "orders"]),
        "payload": st.just({}),
        "attempt": st.integers(),
        "causation_id": st.text(max_size=20),
    }


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.fuzz
@HOSTILE
@given(data=st.data())
def test_the_inbox_consumer_handles_a_genuine_event_after_any_garbage(
    rig: Rig, data: st.DataObject
) -> None:
    # Given: whatever a writer of the broker sends first
    messages = data.draw(garbage(_envelope_fields(rig)), label="garbage")
    before = rig.snapshot()
    rig.writer.write(rig.route.topic, messages)
    # When: a genuine event follows, relayed by its producer
    event_id = rig.publisher.publish(PublishRequest(event_type="invoice.requested", payload={}))
    assert rig.relay.run_once().published == 1
    # Then: the inbox consumer (any exception, a redelivery request among them, fails the
    # test) handles it; the events already final stay as they were
    receive_until(
        lambda: rig.consumer.run_once(rig.subscription),
        lambda: event_id in rig.handled,
        timeout=30,
        what="the genuine event after the garbage",
    )
    assert rig.snapshot() == before
    record = rig.inbox.get(rig.route.group, event_id)
    assert record is not None and record.status is InboxStatus.CONSUMED
