"""Typed payloads through the whole path: publish -> table -> relay -> broker -> handler.

Runs on SQLite with the in-process broker and on the real PostgreSQL with Redis Streams.
Handlers receive their declared payload type; a payload that does not decode into it goes
``dead`` at once with the reason, without a retry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import attrs
import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit import (
    Engine,
    EngineConfig,
    Event,
    JsonPayloadCodec,
    PayloadCodecs,
    PublishRequest,
    Routing,
    Status,
)
from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.wire.envelope import decode_shell
from tests.support.engine import fast_config, unique_routing


@dataclasses.dataclass(frozen=True)
class OrderPlaced:
    order_id: uuid.UUID
    placed_at: datetime
    total: Decimal
    skus: tuple[str, ...]


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    name: str
    credit: Decimal


def order() -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid.uuid4(),
        placed_at=datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc),
        total=Decimal("19.90"),
        skus=("A-1", "B-2"),
    )


@attrs.define
class Stack:
    db: sa.Engine
    repository: SqlRepository
    routing: Routing
    make_broker: Callable[[], Broker]
    engines: list[Engine] = attrs.field(factory=list)

    def engine(self, config: EngineConfig | None = None) -> Engine:
        engine = Engine(
            self.repository, self.make_broker(), self.routing, config=config or fast_config()
        )
        self.engines.append(engine)
        return engine

    def publish(self, engine: Engine, request: PublishRequest) -> str:
        with self.db.begin() as conn:
            return engine.publish(request, connection=conn)

    def row(self, event_type: str, event_id: str) -> Any:
        return self.repository.get_by_event_id(self.routing.route_of(event_type), event_id)


def run_until(engine: Engine, done: Callable[[], bool], steps: int = 40) -> None:
    for _ in range(steps):
        engine.run_once(receive_timeout=0.1)
        if done():
            return
    raise AssertionError(f"not done after {steps} engine steps")


@pytest.fixture(params=["sqlite-memory", "postgres-redis"])
def stack(request: pytest.FixtureRequest, unique: str) -> Iterator[Stack]:
    database, broker_kind = request.param.split("-")
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    routing = unique_routing(unique, "orders", "crm")
    routing.register("order.placed", "orders")
    routing.register("customer.joined", "crm")
    repository = SqlRepository(db)
    repository.create_schema(routing.routes())
    if broker_kind == "memory":
        broker = MemoryBroker()
        make_broker: Callable[[], Broker] = broker.connect
    else:
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        url = request.getfixturevalue("redis_url")
        make_broker = lambda: RedisStreamsBroker.from_url(url)  # noqa: E731
    result = Stack(db=db, repository=repository, routing=routing, make_broker=make_broker)
    yield result
    for engine in result.engines:
        engine.stop(timeout=10)
    with db.begin() as conn:
        for route in routing.routes():
            conn.execute(sa.text(f"DROP TABLE {route.table}"))
    if broker_kind == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.delete(*(route.topic for route in routing.routes()))
        client.close()


def test_a_dataclass_payload_reaches_its_handler_as_the_dataclass(stack: Stack) -> None:
    # Given a handler whose annotation declares the payload type
    engine = stack.engine()
    received: list[OrderPlaced] = []

    @engine.register_handler("order.placed")
    def ship(event: Event[OrderPlaced], connection: Connection) -> None:
        received.append(event.payload)

    # When a dataclass is published and relayed
    sent = order()
    event_id = stack.publish(engine, PublishRequest(event_type="order.placed", payload=sent))
    run_until(engine, lambda: bool(received))
    # Then the handler got an equal dataclass, and the table holds plain JSON
    assert received == [sent]
    assert type(received[0].total) is Decimal and type(received[0].skus) is tuple
    row = stack.row("order.placed", event_id)
    assert row.status is Status.CONSUMED
    assert decode_shell(row.payload).payload == {
        "order_id": str(sent.order_id),
        "placed_at": "2026-11-25T14:00:00+00:00",
        "total": "19.90",
        "skus": ["A-1", "B-2"],
    }


def test_a_pydantic_model_reaches_a_side_effect_handler_declared_by_payload_type(
    stack: Stack,
) -> None:
    engine = stack.engine()
    received: list[Any] = []
    engine.register_handler(
        "customer.joined",
        lambda event: received.append(event.payload),
        transactional=False,
        payload_type=Customer,
    )
    sent = Customer(id=uuid.uuid4(), name="Ada", credit=Decimal("12.50"))
    stack.publish(engine, PublishRequest(event_type="customer.joined", payload=sent))
    run_until(engine, lambda: bool(received))
    assert received == [sent]


def test_a_payload_that_does_not_decode_goes_dead_at_once_with_the_reason(stack: Stack) -> None:
    # Given a typed handler and a producer that sends a payload of the wrong shape
    engine = stack.engine()
    calls: list[Event[OrderPlaced]] = []

    @engine.register_handler("order.placed")
    def ship(event: Event[OrderPlaced], connection: Connection) -> None:
        calls.append(event)

    bad = {"order_id": str(uuid.uuid4()), "placed_at": "2026-11-25T14:00:00Z", "total": "lots"}
    event_id = stack.publish(engine, PublishRequest(event_type="order.placed", payload=bad))
    # When it is relayed and consumed
    run_until(engine, lambda: stack.row("order.placed", event_id).status is Status.DEAD)
    # Then it is dead after one attempt, with a reason naming the type and the field
    row = stack.row("order.placed", event_id)
    assert row.retry_count == 0
    assert row.last_error == (
        "undecodable payload: not a valid OrderPlaced for order.placed: "
        "payload.total: not a valid Decimal (got a string of 4 characters)"
    )
    assert calls == []


CARD = "4111-1111-1111-1111"


@pytest.mark.parametrize("declared", ["dataclass", "pydantic"])
def test_a_payload_value_that_does_not_fit_is_named_by_field_never_quoted(
    stack: Stack, declared: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a handler declaring a UUID where the producer sends a card number
    engine = stack.engine()
    event_type, payload_type, field = {
        "dataclass": ("order.placed", OrderPlaced, "payload.order_id"),
        "pydantic": ("customer.joined", Customer, "id"),
    }[declared]
    engine.register_handler(
        event_type, lambda event: None, transactional=False, payload_type=payload_type
    )
    bad = {"order_id": CARD, "placed_at": "2026-11-25T14:00:00Z", "total": "1", "skus": []}
    if declared == "pydantic":
        bad = {"id": CARD, "name": "Ada", "credit": "1"}
    event_id = stack.publish(engine, PublishRequest(event_type=event_type, payload=bad))
    # When it is relayed and consumed
    with caplog.at_level(logging.ERROR, logger="outboxkit"):
        run_until(engine, lambda: stack.row(event_type, event_id).status is Status.DEAD)
    # Then the reason and the ERROR line name the field and the type, never the value
    reason = stack.row(event_type, event_id).last_error
    errors = [caplog.handler.format(r) for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    for text in (reason, errors[0]):
        assert CARD not in text and "4111" not in text
        assert field in text and "UUID" in text
        assert "input_value" not in text


class VersionedCodec(JsonPayloadCodec):
    """A per-event-type codec: wraps the JSON payload in a schema version."""

    def encode(self, payload: Any) -> Any:
        return {"schema": 2, "data": super().encode(payload)}

    def decode(self, data: Any, payload_type: Any) -> Any:
        assert data["schema"] == 2
        return super().decode(data["data"], payload_type)


def test_an_event_type_can_have_its_own_codec(stack: Stack) -> None:
    codecs = PayloadCodecs(by_event_type={"customer.joined": VersionedCodec()})
    engine = stack.engine(attrs.evolve(fast_config(), codecs=codecs))
    received: list[Any] = []

    def welcome(event: Event[Customer]) -> None:
        received.append(event.payload)

    engine.register_handler("customer.joined", welcome, transactional=False)
    sent = Customer(id=uuid.uuid4(), name="Grace", credit=Decimal(0))
    event_id = stack.publish(engine, PublishRequest(event_type="customer.joined", payload=sent))
    run_until(engine, lambda: bool(received))
    assert received == [sent]
    stored = json.loads(stack.row("customer.joined", event_id).payload)["payload"]
    assert stored["schema"] == 2 and stored["data"]["name"] == "Grace"
