"""The easy ways to get a publish call wrong fail loudly instead of silently.

* a ``sqlalchemy.Engine`` (no transaction to join) as ``connection=`` -> ``TypeError``
  naming what to pass (it was an ``AttributeError`` deep in the insert);
* ``PublisherConfig(require_connection=True)`` makes a forgotten ``connection=`` an error
  (it silently used a transaction of its own, outside the business change);
* an event id published again with another payload is logged with both digests, or
  raised with ``on_payload_conflict="error"`` (the first payload silently won).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit import (
    Engine,
    EngineConfig,
    Event,
    PayloadConflictError,
    Publisher,
    PublisherConfig,
    PublishRequest,
    Routing,
)
from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from tests.support.engine import unique_routing

EVENT = "order.placed"
Outbox = tuple[sa.Engine, Routing, SqlRepository]


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def outbox(request: pytest.FixtureRequest, unique: str) -> Iterator[Outbox]:
    db: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    routing = unique_routing(unique, "orders")
    routing.register(EVENT, "orders")
    # One repository, used once before any caller transaction: its first use reads the
    # server version on a connection of its own (on SQLite that waits for the writer).
    repository = SqlRepository(db)
    repository.create_schema(routing.routes())
    yield db, routing, repository
    with db.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {routing.route_of(EVENT).table}"))


def publisher(outbox: Outbox, **config: Any) -> Publisher:
    _db, routing, repository = outbox
    return Publisher(repository, routing, config=PublisherConfig(**config))


def rows(outbox: Outbox) -> int:
    db, routing, _ = outbox
    with db.connect() as conn:
        table = routing.route_of(EVENT).table
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_an_engine_passed_as_connection_is_a_type_error_naming_what_to_pass(
    outbox: Outbox,
) -> None:
    db, _, _ = outbox
    with pytest.raises(TypeError) as raised:
        publisher(outbox).publish(PublishRequest(event_type=EVENT, payload={}), connection=db)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "publish(connection=...) got a sqlalchemy Engine, which has no transaction to join: "
        "pass the Connection of your open transaction (`with db.begin() as conn: "
        "publish(..., connection=conn)`) or an ORM Session"
    )
    assert rows(outbox) == 0


def test_a_forgotten_connection_is_refused_when_required(
    outbox: Outbox,
) -> None:
    db, _, _ = outbox
    strict = publisher(outbox, require_connection=True)
    with pytest.raises(TypeError, match=r"without connection= is refused .*require_connection"):
        strict.publish(PublishRequest(event_type=EVENT, payload={}))
    assert rows(outbox) == 0
    # With the caller's Connection or Session it publishes as usual.
    with db.begin() as conn:
        strict.publish(PublishRequest(event_type=EVENT, payload={}), connection=conn)
    with Session(db) as session, session.begin():
        strict.publish(PublishRequest(event_type=EVENT, payload={}), connection=session)
    assert rows(outbox) == 2


def test_republishing_an_event_id_with_another_payload_logs_both_digests(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    db, _, _ = outbox
    pub = publisher(outbox)
    with db.begin() as conn:
        pub.publish(
            PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-1"), connection=conn
        )
    with caplog.at_level(logging.WARNING, logger="outboxkit"):
        # the same payload again (a retried request): silent
        pub.publish(PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-1"))
        assert caplog.records == []
        with db.begin() as conn:
            pub.publish(
                PublishRequest(event_type=EVENT, payload={"n": 2}, event_id="e-1"),
                connection=conn,
            )
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("event e-1 was published again with a different payload")
    assert message.count("sha256 ") == 2 and "the stored payload is kept" in message
    assert rows(outbox) == 1


def test_a_payload_conflict_raises_when_asked_and_the_callers_transaction_rolls_back(
    outbox: Outbox,
) -> None:
    db, _, _ = outbox
    pub = publisher(outbox, on_payload_conflict="error")
    pub.publish(PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-1"))
    batch = [
        PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-2"),
        PublishRequest(event_type=EVENT, payload={"n": 2}, event_id="e-1"),
    ]
    with pytest.raises(PayloadConflictError, match="e-1 was published again"), db.begin() as conn:
        pub.publish_many(batch, connection=conn)
    assert rows(outbox) == 1


def test_a_payload_conflict_caught_by_the_caller_leaves_nothing_of_the_batch_behind(
    outbox: Outbox,
) -> None:
    db, _, _ = outbox
    pub = publisher(outbox, on_payload_conflict="error")
    pub.publish(PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-1"))
    batch = [
        PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-2"),
        PublishRequest(event_type=EVENT, payload={"n": 2}, event_id="e-1"),
    ]
    with db.begin() as conn, pytest.raises(PayloadConflictError):
        pub.publish_many(batch, connection=conn)
        # the caller goes on and commits its transaction: e-2 must not have been written
    assert rows(outbox) == 1


@dataclasses.dataclass
class OrderPlaced:
    order_id: int


def test_a_disabled_engine_checks_the_connection_and_decodes_like_the_relay(
    sqlite_engine: sa.Engine,
) -> None:
    routing = Routing()
    routing.register(EVENT, "orders")
    engine = Engine(
        SqlRepository(sqlite_engine),
        MemoryBroker(),
        routing,
        config=EngineConfig(enabled=False, publisher=PublisherConfig(require_connection=True)),
    )
    received: list[OrderPlaced] = []

    @engine.register_handler(EVENT)
    def ship(event: Event[OrderPlaced], connection: Connection) -> None:
        received.append(event.payload)

    request = PublishRequest(event_type=EVENT, payload=OrderPlaced(order_id=7))
    with pytest.raises(TypeError, match="require_connection"):
        engine.publish(request)
    with pytest.raises(TypeError, match="got a sqlalchemy Engine"):
        engine.publish(request, connection=sqlite_engine)  # type: ignore[arg-type]
    with sqlite_engine.begin() as conn:
        engine.publish(request, connection=conn)
    assert received == [OrderPlaced(order_id=7)]


def test_one_event_id_twice_in_a_batch_with_different_payloads_is_reported_too(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    batch = [
        PublishRequest(event_type=EVENT, payload={"n": 1}, event_id="e-1"),
        PublishRequest(event_type=EVENT, payload={"n": 2}, event_id="e-1"),
    ]
    with pytest.raises(PayloadConflictError, match="e-1 was published again"):
        publisher(outbox, on_payload_conflict="error").publish_many(batch)
    assert rows(outbox) == 0
    with caplog.at_level(logging.WARNING, logger="outboxkit"):
        assert publisher(outbox).publish_many(batch) == ["e-1", "e-1"]
    assert len(caplog.records) == 1
    assert rows(outbox) == 1
