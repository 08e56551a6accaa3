"""Receipts are read from the broker, where any writer may put anything: none of them may stop
the receipt thread, finish an event that was never sent, or finish it as another event.

Rows 1, 7, 10 and 12 of issue #18, on the producer's side of an inbox route (PostgreSQL and
MariaDB, Redis Streams): each receipt is written with a plain ``XADD``, as a writer of the
broker would, and applied by the engine's receipt step or its receipt thread. Then the race
a genuine receipt can run with the relay's ``published`` mark, and hypothesis playing a
writer of the receipt topic on the real Redis and the real Kafka-protocol broker.
"""

from __future__ import annotations

import json
import logging
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
from outboxkit.engine import Engine
from outboxkit.inbox.receipts import (
    RECEIPT_HOLD_SECONDS,
    ReceiptApplier,
    receipts_group,
    receipts_topic,
)
from outboxkit.messages import OutboxMessage, PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay, RelayConfig
from outboxkit.routing import Route, Routing, ServiceCatalog
from tests.support.engine import fast_config, wait_for
from tests.support.hostile import (
    Writer,
    broker_and_writer,
    garbage,
    nested,
    open_bystanders,
    receipt_for,
    receive_until,
    xadd,
)

pytestmark = pytest.mark.redis


@attrs.define
class Producer:
    """The producer of an inbox route: its engine relays, a receipt applier applies."""

    engine: Engine
    repository: SqlRepository
    route: Route
    redis_url: str
    applier: ReceiptApplier
    broker: RedisStreamsBroker

    def publish(self, event_type: str = "invoice.requested") -> OutboxMessage:
        event_id = self.engine.publish(PublishRequest(event_type=event_type, payload={"n": 1}))
        return self.row(event_id)

    def row(self, event_id: str) -> OutboxMessage:
        row = self.repository.get_by_event_id(self.route, event_id)
        assert row is not None
        return row

    def relay(self) -> None:
        """One relay step: every pending row is sent and marked ``published``."""
        relay = Relay(self.repository, self.broker, self.route, config=RelayConfig(prefetch=False))
        try:
            relay.run_once()
        finally:
            relay.close()

    def send_receipts(self, *values: bytes) -> None:
        xadd(self.redis_url, receipts_topic(self.route), values)

    def apply_receipts(self, applier: ReceiptApplier | None = None) -> int:
        """Receive and apply what the receipt stream holds, as the receipt thread would."""
        topic, group = receipts_topic(self.route), receipts_group(self.route)
        self.broker.ensure_topic(topic, group)
        subscription = self.broker.subscribe(topic, group, "applier")
        try:
            return (applier or self.applier).run_once(subscription, timeout=0.2)
        finally:
            subscription.close()


def _routing(unique: str) -> Routing:
    catalog = ServiceCatalog(namespace=f"hr-{unique}")
    catalog.configure("billing", table=f"hr_{unique}_billing_outbox", inbox=True)
    routing = Routing(catalog)
    routing.register("invoice.requested", "billing")
    routing.register("invoice.voided", "billing")
    return routing


def _producer(db: sa.Engine, redis_url: str, unique: str) -> Iterator[Producer]:
    routing = _routing(unique)
    repository = SqlRepository(db)
    broker = RedisStreamsBroker.from_url(redis_url)
    engine = Engine(
        repository,
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(relay_services=("billing",), consumer_services=()),
    )
    engine.create_schema()
    route = routing.route_of_service("billing")
    try:
        yield Producer(
            engine, repository, route, redis_url, ReceiptApplier(repository, route), broker
        )
    finally:
        engine.stop(timeout=10)
        broker.close()
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {route.table}"))
        repository.close()


@pytest.fixture(params=["postgres", "mysql"])
def producer(request: pytest.FixtureRequest, redis_url: str, unique: str) -> Iterator[Producer]:
    yield from _producer(request.getfixturevalue(f"{request.param}_engine"), redis_url, unique)


@pytest.fixture
def pg_producer(postgres_engine: sa.Engine, redis_url: str, unique: str) -> Iterator[Producer]:
    yield from _producer(postgres_engine, redis_url, unique)


# --------------------------------------------------------------------------- row 1


RECEIPT_STOPPERS = {
    "outbox_id-1e400": b'{"event_id":"e","outbox_id":1e400,"event_type":"t","outcome":"dead"}',
    "outbox_id-NaN": b'{"event_id":"e","outbox_id":NaN,"event_type":"t","outcome":"dead"}',
    "nested-100000-deep": nested(100_000),
}


@pytest.mark.postgres
@pytest.mark.parametrize("poison", RECEIPT_STOPPERS.values(), ids=RECEIPT_STOPPERS.keys())
def test_a_receipt_that_breaks_the_parser_does_not_stop_the_receipt_thread(
    pg_producer: Producer, poison: bytes
) -> None:
    # Given: the producer's engine running, one event sent and waiting for its receipt
    pg_producer.engine.start()
    row = pg_producer.publish()
    wait_for(
        lambda: pg_producer.row(row.event_id or "").status is Status.PUBLISHED,
        timeout=20,
        what="the event relayed",
    )
    # When: a receipt the parser chokes on comes first, then the event's genuine receipt
    pg_producer.send_receipts(poison, receipt_for(row))
    # Then: the receipt thread went on past it and applied the genuine receipt
    wait_for(
        lambda: pg_producer.row(row.event_id or "").status is Status.CONSUMED,
        timeout=15,
        what="the genuine receipt applied after the poison",
    )


# --------------------------------------------------------------------------- row 12


def _huge(text: str) -> str:
    return text * (10_000_000 // len(text))


HUGE_RECEIPTS = {
    "10MB-bad-outcome": json.dumps(
        {"event_id": _huge("x"), "outbox_id": 1, "event_type": "t", "outcome": "lost"}
    ).encode(),
    "10MB-event-id": json.dumps(
        {"event_id": _huge("x"), "outbox_id": 1, "event_type": "t", "outcome": "consumed"}
    ).encode(),
    "10MB-not-json": b"{" + _huge("\xff").encode("latin-1"),
}


@pytest.mark.postgres
@pytest.mark.parametrize("huge", HUGE_RECEIPTS.values(), ids=HUGE_RECEIPTS.keys())
def test_a_10mb_malformed_receipt_is_logged_in_one_short_line_and_skipped(
    pg_producer: Producer, huge: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: a sent event
    row = pg_producer.publish()
    pg_producer.relay()
    # When: a 10 MB malformed receipt comes before the event's genuine receipt
    pg_producer.send_receipts(huge, receipt_for(row))
    with caplog.at_level(logging.DEBUG, logger="outboxkit"):
        pg_producer.apply_receipts()
    # Then: the genuine receipt was applied, and no line carries the malformed one
    assert pg_producer.row(row.event_id or "").status is Status.CONSUMED
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("outboxkit")]
    assert any("malformed receipt" in line for line in lines)
    assert max(len(line) for line in lines) < 1000


# --------------------------------------------------------------------------- row 7


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("outcome", ["dead", "consumed"])
def test_a_receipt_naming_the_right_event_id_with_another_type_leaves_the_row_alone(
    producer: Producer, outcome: str
) -> None:
    # Given: a sent event, waiting for its receipt
    row = producer.publish()
    producer.relay()
    # When: a receipt names its row and event id, but another event type
    producer.send_receipts(
        receipt_for(row, event_type="invoice.voided", outcome=outcome, reason="forged")
    )
    producer.apply_receipts()
    # Then: the row is untouched
    after = producer.row(row.event_id or "")
    assert (after.status, after.last_error) == (Status.PUBLISHED, None)


@pytest.mark.postgres
@pytest.mark.mysql
def test_a_dead_receipt_stores_a_bounded_reason_marked_as_the_consumers_report(
    producer: Producer,
) -> None:
    # Given: a sent event
    row = producer.publish()
    producer.relay()
    # When: its receipt says dead, with a long reason carrying terminal escapes
    reason = "\x1b]0;owned\x07\x1b[2J" + "r" * 1900
    producer.send_receipts(receipt_for(row, outcome="dead", reason=reason))
    producer.apply_receipts()
    # Then: the row is dead; the reason says who reported it, without control characters
    after = producer.row(row.event_id or "")
    assert after.status is Status.DEAD
    stored = after.last_error or ""
    assert "reported by the consumer" in stored
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in stored)
    assert len(stored) < 600


# --------------------------------------------------------------------------- row 10


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("outcome", ["consumed", "dead"])
def test_a_receipt_naming_a_row_no_relay_has_sent_leaves_it_pending(
    producer: Producer, outcome: str
) -> None:
    # Given: an event committed and not relayed yet (its event id is what publish returned)
    row = producer.publish()
    # When: a receipt naming it exactly comes first
    producer.send_receipts(receipt_for(row, outcome=outcome))
    producer.apply_receipts()
    # Then: the row is still pending, and the relay sends it as usual
    assert producer.row(row.event_id or "").status is Status.PENDING
    producer.relay()
    assert producer.row(row.event_id or "").status is Status.PUBLISHED
    producer.apply_receipts()
    assert producer.row(row.event_id or "").status is Status.PUBLISHED


# --------------------------------------------------------------------------- the race


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _claim(producer: Producer) -> str:
    """Claim every due row, as a relay does before sending: ``pending`` under a lease."""
    claim = producer.repository.claim_due(producer.route, limit=10, lease_seconds=60)
    assert claim.messages
    return claim.token


@pytest.mark.postgres
@pytest.mark.mysql
def test_a_receipt_that_beats_the_relays_published_mark_is_applied_once_it_lands(
    producer: Producer,
) -> None:
    # Given: a row a relay is sending (claimed; the consumer answered before the mark)
    row = producer.publish()
    token = _claim(producer)
    applier = ReceiptApplier(producer.repository, producer.route, clock=Clock())
    producer.send_receipts(receipt_for(row))
    # When: the receipt comes first, it is held, the row untouched
    assert producer.apply_receipts(applier) == 0
    assert applier.held == 1
    assert producer.row(row.event_id or "").status is Status.PENDING
    # ... and once the relay's mark lands, the next step applies it
    producer.repository.mark_published(producer.route, [row.id], token=token)
    assert producer.apply_receipts(applier) == 1
    assert (producer.row(row.event_id or "").status, applier.held) == (Status.CONSUMED, 0)


@pytest.mark.postgres
@pytest.mark.mysql
def test_a_held_receipt_is_given_up_when_its_row_is_not_published_in_time(
    producer: Producer,
) -> None:
    # Given: a receipt held for a row a relay is sending
    row = producer.publish()
    token = _claim(producer)
    clock = Clock()
    applier = ReceiptApplier(producer.repository, producer.route, clock=clock)
    producer.send_receipts(receipt_for(row))
    producer.apply_receipts(applier)
    assert applier.held == 1
    # When: its time runs out before the row is published
    clock.now += RECEIPT_HOLD_SECONDS + 1
    producer.apply_receipts(applier)
    # Then: it is dropped; the row, published later, waits for a new receipt
    assert applier.held == 0
    producer.repository.mark_published(producer.route, [row.id], token=token)
    producer.apply_receipts(applier)
    assert producer.row(row.event_id or "").status is Status.PUBLISHED


@pytest.mark.postgres
def test_a_receipt_for_another_event_of_a_row_being_sent_is_not_held(
    pg_producer: Producer,
) -> None:
    row = pg_producer.publish()
    _claim(pg_producer)
    applier = ReceiptApplier(pg_producer.repository, pg_producer.route, clock=Clock())
    pg_producer.send_receipts(receipt_for(row, event_type="invoice.voided"))
    pg_producer.apply_receipts(applier)
    assert applier.held == 0


# --------------------------------------------------------------------------- hypothesis


@attrs.define
class Rig:
    """The producer of an inbox route on PostgreSQL with its receipt applier, reading the
    receipt topic of a real broker through one subscription kept across examples, and open
    rows that no receipt on the topic may finish."""

    repository: SqlRepository
    route: Route
    publisher: Publisher
    relay: Relay
    applier: ReceiptApplier
    subscription: Subscription
    writer: Writer
    bystanders: dict[int, str]
    #: The bystander a relay is sending (``pending`` under a lease), as it was at the start.
    sending: OutboxMessage

    def rows(self) -> list[OutboxMessage | None]:
        return [self.repository.get(self.route, row_id) for row_id in self.bystanders]


@pytest.fixture(params=["redis", "kafka"])
def rig(request: pytest.FixtureRequest, postgres_engine: sa.Engine, unique: str) -> Iterator[Rig]:
    routing = _routing(unique)
    route = routing.route_of_service("billing")
    repository = SqlRepository(postgres_engine)
    repository.create_schema([route])
    publisher = Publisher(repository, routing)
    bystanders = open_bystanders(repository, route, publisher, "invoice.requested")
    sending = repository.get(route, list(bystanders)[-1])
    assert sending is not None and sending.status is Status.PENDING
    topic, group = receipts_topic(route), receipts_group(route)
    with broker_and_writer(request, request.param) as (broker, writer):
        broker.ensure_topic(route.topic, route.group)
        broker.ensure_topic(topic, group)
        subscription = broker.subscribe(topic, group, f"hostile-{unique}")
        relay = Relay(repository, broker, route, config=RelayConfig(prefetch=False))
        try:
            yield Rig(
                repository,
                route,
                publisher,
                relay,
                ReceiptApplier(repository, route),
                subscription,
                writer,
                bystanders,
                sending,
            )
        finally:
            relay.close()
            subscription.close()
            with postgres_engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {route.table}"))
            repository.close()


HOSTILE = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _receipts(rig: Rig) -> st.SearchStrategy[list[bytes]]:
    """Garbage receipts: anything, receipts with any field wrong (never a published row's
    exact event id and type together), and exact receipts for the row still being sent."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "event_id": st.sampled_from(list(rig.bystanders.values())) | st.uuids().map(str),
        "outbox_id": st.sampled_from(list(rig.bystanders)),
        "event_type": st.sampled_from(["invoice.voided", "invoice.unknown"]),
        "outcome": st.sampled_from(["consumed", "dead"]),
        "reason": st.text(max_size=40),
    }
    exact = st.sampled_from([rig.sending]).flatmap(
        lambda row: st.sampled_from(["consumed", "dead"]).map(
            lambda outcome: receipt_for(row, outcome=outcome, reason="forged")
        )
    )
    return st.lists(garbage(fields) | exact.map(lambda r: [r]), min_size=1, max_size=2).map(
        lambda groups: [message for group in groups for message in group]
    )


@pytest.mark.postgres
@pytest.mark.fuzz
@HOSTILE
@given(data=st.data())
def test_the_receipt_applier_applies_a_genuine_receipt_after_any_garbage(
    rig: Rig, data: st.DataObject
) -> None:
    # Given: a sent event, and whatever a writer of the broker puts on the receipt topic
    event_id = rig.publisher.publish(PublishRequest(event_type="invoice.requested", payload={}))
    assert rig.relay.run_once().published == 1
    row = rig.repository.get_by_event_id(rig.route, event_id)
    assert row is not None
    before = rig.rows()
    rig.writer.write(receipts_topic(rig.route), data.draw(_receipts(rig), label="garbage"))
    # When: the event's genuine receipt follows
    rig.writer.write(receipts_topic(rig.route), [receipt_for(row)])

    # Then: the applier's steps (any exception fails the test) mark its row consumed, and
    # leave every row the garbage named as it was
    def consumed() -> bool:
        current = rig.repository.get(rig.route, row.id)
        return current is not None and current.status is Status.CONSUMED

    receive_until(
        lambda: rig.applier.run_once(rig.subscription, timeout=0.2),
        consumed,
        timeout=30,
        what="the genuine receipt after the garbage",
    )
    assert rig.rows() == before
