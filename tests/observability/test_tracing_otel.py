"""OpenTelemetry tracing end to end, recorded by the SDK's in-memory span exporter.

The trace context of the publishing span is stored with the event, carried in the broker
headers, and the handler runs in a consumer span linked to it; a publish inside that
handler is traced as its child. Real PostgreSQL + Redis Streams with engine threads; the
failure case runs step by step on SQLite.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.observability.otel import OpenTelemetryTracing
from outboxkit.routing import Routing
from outboxkit.wire.envelope import decode_shell
from tests.support.engine import fast_config, unique_routing, wait_for
from tests.support.tapped_broker import TappedBroker


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def _routing(unique: str) -> Routing:
    routing = unique_routing(unique, "orders", "billing")
    routing.register("order.placed", "orders")
    routing.register("invoice.requested", "billing")
    return routing


def _one(spans: list[ReadableSpan], name: str, event_id: str) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.name == name and (s.attributes or {}).get("messaging.message.id") == event_id
    ]
    assert len(found) == 1, f"{name} spans of {event_id}: {found}"
    return found[0]


def _ctx(span: ReadableSpan) -> trace.SpanContext:
    assert span.context is not None
    return span.context


def _ids(context: trace.SpanContext | None) -> tuple[int, int]:
    assert context is not None
    return context.trace_id, context.span_id


def _linked(span: ReadableSpan) -> list[tuple[int, int]]:
    """(trace id, span id) of each span ``span`` links to (links read back from headers
    are remote contexts, so whole contexts never compare equal to the local ones)."""
    return [_ids(link.context) for link in span.links]


def _traceparent(span: ReadableSpan) -> str:
    ctx = _ctx(span)
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def test_publish_relay_and_handler_spans_are_linked_through_the_stored_context(
    postgres_engine: sa.Engine,
    redis_url: str,
    unique: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    # Given a traced engine whose "order.placed" handler publishes "invoice.requested"
    routing = _routing(unique)
    repository = SqlRepository(postgres_engine)
    repository.create_schema(routing.routes())
    broker = TappedBroker(RedisStreamsBroker.from_url(redis_url))
    tracing = OpenTelemetryTracing(provider, messaging_system="redis")
    engine = Engine(repository, broker, routing, config=fast_config(tracing=tracing))
    handled: dict[str, Event] = {}

    def on_order(event: Event, connection: Connection) -> None:
        handled[event.event_type] = event
        engine.publish(
            PublishRequest(event_type="invoice.requested", payload={}), connection=connection
        )

    def on_invoice(event: Event, connection: Connection) -> None:
        handled[event.event_type] = event

    engine.register_handler("order.placed", on_order)
    engine.register_handler("invoice.requested", on_invoice)
    engine.start()
    orders, billing = routing.route_of_service("orders"), routing.route_of_service("billing")
    try:
        # When a request, inside its own span, publishes the first event
        first = PublishRequest(event_type="order.placed", payload={"n": 1})
        with (
            provider.get_tracer("test").start_as_current_span("POST /orders") as request_span,
            postgres_engine.begin() as conn,
        ):
            engine.publish(first, connection=conn)

        def second_consumed() -> bool:
            if "invoice.requested" not in handled:
                return False
            row = repository.get_by_event_id(billing, handled["invoice.requested"].event_id)
            return row is not None and row.status is Status.CONSUMED

        wait_for(second_consumed, what="the second event consumed")
        row = repository.get_by_event_id(orders, first.event_id)
    finally:
        assert engine.stop(timeout=10)
        with postgres_engine.begin() as conn:
            for route in routing.routes():
                conn.execute(sa.text(f"DROP TABLE {route.table}"))
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete(orders.topic, billing.topic)
        client.close()

    spans = list(exporter.get_finished_spans())
    second = handled["invoice.requested"]

    # Then the create span is a child of the request's span ...
    create_a = _one(spans, f"create {orders.topic}", first.event_id)
    assert create_a.kind is trace.SpanKind.PRODUCER
    assert create_a.parent is not None
    assert create_a.parent.span_id == request_span.get_span_context().span_id
    assert (create_a.attributes or {})["messaging.operation.type"] == "create"
    assert (create_a.attributes or {})["messaging.system"] == "redis"
    # ... its context is stored in the event shell and carried in the broker headers ...
    assert row is not None
    assert decode_shell(row.payload).headers["traceparent"] == _traceparent(create_a)
    delivered = [d for d in broker.received if d.headers.get("event_id") == first.event_id]
    assert delivered and delivered[0].headers["traceparent"] == _traceparent(create_a)
    # ... the relay's send span links to it ...
    sends = [
        s
        for s in spans
        if s.name == f"send {orders.topic}" and _ids(create_a.context) in _linked(s)
    ]
    assert len(sends) == 1 and sends[0].kind is trace.SpanKind.PRODUCER
    # ... the handler ran in a consumer span linked to it, in a trace of its own ...
    process_a = _one(spans, f"process {orders.topic}", first.event_id)
    assert process_a.kind is trace.SpanKind.CONSUMER
    assert _linked(process_a) == [_ids(create_a.context)]
    assert _ctx(process_a).trace_id != _ctx(create_a).trace_id
    attributes = process_a.attributes or {}
    assert attributes["messaging.consumer.group.name"] == orders.group
    assert attributes["messaging.destination.name"] == orders.topic
    assert attributes["messaging.message.conversation_id"] == first.event_id
    # ... and what the handler published is traced as its child, and linked in turn.
    create_b = _one(spans, f"create {billing.topic}", second.event_id)
    assert create_b.parent is not None and create_b.parent.span_id == _ctx(process_a).span_id
    process_b = _one(spans, f"process {billing.topic}", second.event_id)
    assert _linked(process_b) == [_ids(create_b.context)]
    assert (process_b.attributes or {})["outboxkit.causation_id"] == first.event_id


def test_failing_handler_span_records_the_error(
    sqlite_engine: sa.Engine,
    unique: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    routing = _routing(unique)
    repository = SqlRepository(sqlite_engine)
    repository.create_schema(routing.routes())
    tracing = OpenTelemetryTracing(provider)
    engine = Engine(repository, MemoryBroker(), routing, config=fast_config(tracing=tracing))

    def broken(event: Event, connection: Connection) -> None:
        raise RuntimeError("downstream is gone")

    engine.register_handler("order.placed", broken)
    request = PublishRequest(event_type="order.placed", payload={})
    engine.publish(request)
    for _ in range(20):
        engine.run_once(receive_timeout=0.05)
        if any(s.name.startswith("process ") for s in exporter.get_finished_spans()):
            break

    process = _one(
        list(exporter.get_finished_spans()),
        f"process {routing.route_of_service('orders').topic}",
        request.event_id,
    )
    assert process.status.status_code is trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in process.events)
    assert (process.attributes or {})["messaging.system"] == "outboxkit"


def test_request_traceparent_given_by_the_caller_is_kept(
    sqlite_engine: sa.Engine, unique: str, provider: TracerProvider
) -> None:
    routing = _routing(unique)
    repository = SqlRepository(sqlite_engine)
    repository.create_schema(routing.routes())
    engine = Engine(
        repository,
        MemoryBroker(),
        routing,
        config=fast_config(tracing=OpenTelemetryTracing(provider)),
    )
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    request = PublishRequest(event_type="order.placed", payload={}, headers={"traceparent": given})

    engine.publish(request)

    row = repository.get_by_event_id(routing.route_of_service("orders"), request.event_id)
    assert row is not None and decode_shell(row.payload).headers["traceparent"] == given


def test_core_never_imports_opentelemetry() -> None:
    code = (
        "import sys, outboxkit, outboxkit.engine, outboxkit.cli.main, outboxkit.backends, "
        "outboxkit.brokers.memory, outboxkit.observability.tracing\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
