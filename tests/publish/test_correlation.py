"""Correlation and causation ids: stored in the shell, carried in the envelope, the broker
headers and :class:`Event`, and inherited by what a handler publishes.

The chain test runs real engine threads on PostgreSQL + Redis Streams, MariaDB + Kafka and
PostgreSQL + Kafka through librdkafka;
the rest use SQLite and single steps, so they are deterministic.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine, EngineConfig
from outboxkit.messages import Event, PublishRequest
from outboxkit.publish.causality import INFO_KEY, handling
from outboxkit.routing import Routing
from outboxkit.wire.envelope import (
    HEADER_CAUSATION_ID,
    HEADER_CORRELATION_ID,
    decode_envelope,
    decode_shell,
)
from tests.support.engine import fast_config, unique_routing, wait_for
from tests.support.tapped_broker import TappedBroker

# --------------------------------------------------------------------------- helpers


def _chain_routing(unique: str) -> Routing:
    routing = unique_routing(unique, "orders", "billing")
    routing.register("order.placed", "orders")
    routing.register("invoice.requested", "billing")
    routing.register("invoice.sent", "orders")
    return routing


def _register_chain(engine: Engine, seen: dict[str, Event]) -> None:
    """A handled -> publishes B -> B handled -> publishes C -> C handled."""
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            seen[event.event_type] = event

    def on_order(event: Event, connection: Connection) -> None:
        record(event)
        engine.publish(
            PublishRequest(event_type="invoice.requested", message_key="c1", payload={}),
            connection=connection,
        )

    def on_invoice_requested(event: Event, connection: Connection) -> None:
        record(event)
        engine.publish(
            PublishRequest(event_type="invoice.sent", message_key="c1", payload={}),
            connection=connection,
        )

    def on_invoice_sent(event: Event, connection: Connection) -> None:
        record(event)

    engine.register_handler("order.placed", on_order)
    engine.register_handler("invoice.requested", on_invoice_requested)
    engine.register_handler("invoice.sent", on_invoice_sent)


def _assert_chain(seen: dict[str, Event], first: PublishRequest) -> None:
    a, b, c = seen["order.placed"], seen["invoice.requested"], seen["invoice.sent"]
    assert a.event_id == first.event_id
    assert (a.correlation_id, a.causation_id) == (first.event_id, "")
    assert (b.correlation_id, b.causation_id) == (first.event_id, a.event_id)
    assert (c.correlation_id, c.causation_id) == (first.event_id, b.event_id)
    assert len({a.event_id, b.event_id, c.event_id}) == 3


# --------------------------------------------------------------------------- real services

CHAIN_STACKS = [("postgres", "redis"), ("mysql", "kafka"), ("postgres", "confluent")]


@pytest.fixture(params=CHAIN_STACKS, ids=["-".join(c) for c in CHAIN_STACKS])
def chain_stack(
    request: pytest.FixtureRequest, unique: str
) -> Iterator[tuple[sa.Engine, Routing, TappedBroker]]:
    database, broker_kind = request.param
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    routing = _chain_routing(unique)
    inner: Broker
    if broker_kind == "confluent":
        from outboxkit.brokers.confluent import ConfluentKafkaBroker

        inner = ConfluentKafkaBroker.from_bootstrap(request.getfixturevalue("kafka_bootstrap"))
    elif broker_kind == "kafka":
        from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

        inner = KafkaBroker(KafkaConfig.from_bootstrap(request.getfixturevalue("kafka_bootstrap")))
    else:
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        inner = RedisStreamsBroker.from_url(request.getfixturevalue("redis_url"))
    SqlRepository(db).create_schema(routing.routes())
    yield db, routing, TappedBroker(inner)
    with db.begin() as conn:
        for route in routing.routes():
            conn.execute(sa.text(f"DROP TABLE {route.table}"))
    if broker_kind == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.delete(*(route.topic for route in routing.routes()))
        client.close()


def test_three_step_chain_shares_one_correlation_id_and_names_each_cause(
    chain_stack: tuple[sa.Engine, Routing, TappedBroker],
) -> None:
    # Given an engine whose handlers each publish the next event on their own connection
    db, routing, broker = chain_stack
    engine = Engine(SqlRepository(db), broker, routing, config=fast_config())
    seen: dict[str, Event] = {}
    _register_chain(engine, seen)
    engine.start()
    try:
        # When a request publishes the first event with no flow ids
        first = PublishRequest(event_type="order.placed", message_key="c1", payload={"n": 1})
        with db.begin() as conn:
            engine.publish(first, connection=conn)
        wait_for(lambda: "invoice.sent" in seen, timeout=45, what="the third event handled")
    finally:
        assert engine.stop(timeout=10)

    # Then every event carries the first one's id as correlation id and its parent as cause
    _assert_chain(seen, first)
    # ... and the broker messages carried both as headers
    headers = {d.headers["event_id"]: d.headers for d in broker.received}
    for event in seen.values():
        got = headers[event.event_id]
        assert got[HEADER_CORRELATION_ID] == first.event_id
        assert got.get(HEADER_CAUSATION_ID, "") == event.causation_id


# --------------------------------------------------------------------------- embedded


@pytest.fixture
def embedded(sqlite_engine: sa.Engine, unique: str) -> tuple[sa.Engine, Engine]:
    routing = _chain_routing(unique)
    repository = SqlRepository(sqlite_engine)
    repository.create_schema(routing.routes())
    return sqlite_engine, Engine(repository, MemoryBroker(), routing, config=fast_config())


def _drain(engine: Engine, until: Callable[[], bool]) -> None:
    for _ in range(50):
        engine.run_once(receive_timeout=0.05)
        if until():
            return
    raise AssertionError("the events were not all handled")


def test_ids_given_in_the_request_win_over_inherited_ones(
    embedded: tuple[sa.Engine, Engine],
) -> None:
    _db, engine = embedded
    seen: dict[str, Event] = {}

    def on_order(event: Event, connection: Connection) -> None:
        seen[event.event_type] = event
        engine.publish(
            PublishRequest(
                event_type="invoice.requested",
                payload={},
                correlation_id="flow-explicit",
                causation_id="cause-explicit",
            ),
            connection=connection,
        )

    engine.register_handler("order.placed", on_order)
    engine.register_handler("invoice.requested", lambda e, c: seen.setdefault(e.event_type, e))
    first = PublishRequest(event_type="order.placed", payload={}, correlation_id="http-req-7")
    engine.publish(first)

    _drain(engine, lambda: "invoice.requested" in seen)
    assert (seen["order.placed"].correlation_id, seen["order.placed"].causation_id) == (
        "http-req-7",
        "",
    )
    b = seen["invoice.requested"]
    assert (b.correlation_id, b.causation_id) == ("flow-explicit", "cause-explicit")


def test_side_effect_handler_publishing_without_a_connection_still_joins_the_flow(
    embedded: tuple[sa.Engine, Engine],
) -> None:
    _db, engine = embedded
    seen: dict[str, Event] = {}

    def notify(event: Event) -> None:
        seen[event.event_type] = event
        engine.publish(PublishRequest(event_type="invoice.requested", payload={}))

    engine.register_handler("order.placed", notify, transactional=False)
    engine.register_handler("invoice.requested", lambda e, c: seen.setdefault(e.event_type, e))
    first = PublishRequest(event_type="order.placed", payload={})
    engine.publish(first)

    _drain(engine, lambda: "invoice.requested" in seen)
    b = seen["invoice.requested"]
    assert (b.correlation_id, b.causation_id) == (first.event_id, first.event_id)


def test_handler_mark_is_removed_from_the_pooled_connection_when_the_handler_ends(
    embedded: tuple[sa.Engine, Engine],
) -> None:
    db, engine = embedded
    cause = Event(
        event_id="cause-1",
        outbox_id=1,
        event_type="order.placed",
        event_version="v1",
        service_name="orders",
        aggregate_id="",
        message_key="",
        payload={},
        headers={},
        attempt=1,
        correlation_id="flow-1",
    )
    inside = PublishRequest(event_type="invoice.requested", payload={})
    after = PublishRequest(event_type="invoice.requested", payload={})
    with db.begin() as conn:
        with handling(cause, conn):
            engine.publish(inside, connection=conn)
        assert INFO_KEY not in conn.info
        engine.publish(after, connection=conn)

    route = engine.routing.route_of_service("billing")
    shells = {}
    for request in (inside, after):
        row = engine.repository.get_by_event_id(route, request.event_id)
        assert row is not None
        shells[request.event_id] = decode_shell(row.payload)
    assert shells[inside.event_id].correlation_id == "flow-1"
    assert shells[inside.event_id].causation_id == "cause-1"
    assert shells[after.event_id].correlation_id == after.event_id
    assert shells[after.event_id].causation_id == ""


def test_disabled_engine_runs_the_chain_inline_with_the_same_ids(
    sqlite_engine: sa.Engine, unique: str
) -> None:
    routing = _chain_routing(unique)
    repository = SqlRepository(sqlite_engine)
    engine = Engine(repository, None, routing, config=EngineConfig(enabled=False))
    seen: dict[str, Event] = {}
    _register_chain(engine, seen)
    first = PublishRequest(event_type="order.placed", payload={})

    with sqlite_engine.begin() as conn:
        engine.publish(first, connection=conn)

    _assert_chain(seen, first)


def test_go_rows_and_envelopes_without_flow_ids_decode_as_their_own_flow() -> None:
    go_shell = json.dumps(
        {"event_id": "17", "event_type": "order.placed", "event_version": "v1", "payload": {}}
    )
    shell = decode_shell(go_shell)
    assert (shell.correlation_id, shell.causation_id) == ("", "")
    go_envelope = json.dumps(
        {"outbox_id": 17, "event_id": "17", "event_type": "order.placed", "payload": {}}
    )
    envelope = decode_envelope(go_envelope.encode())
    assert (envelope.correlation_id, envelope.causation_id) == ("", "")
    event = Event(
        event_id=envelope.event_id,
        outbox_id=17,
        event_type=envelope.event_type,
        event_version="v1",
        service_name="",
        aggregate_id="",
        message_key="",
        payload={},
        headers={},
        attempt=1,
        correlation_id=envelope.correlation_id,
    )
    assert (event.correlation_id, event.causation_id) == ("17", "")
