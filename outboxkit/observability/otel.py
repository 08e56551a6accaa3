"""OpenTelemetry tracing for the outbox (extra ``otel``: ``pip install outboxkit[otel]``).

Three spans per event, named and attributed after the OpenTelemetry messaging semantic
conventions (``messaging.operation.type`` ``create`` / ``send`` / ``process``):

* ``create <topic>`` (``PRODUCER``), around writing the event in the caller's transaction,
  a child of whatever span is current there (the HTTP request, say). Its context is stored
  in the event shell as a W3C ``traceparent`` (and ``tracestate``), so it survives the
  commit, the table and every retry, and the relay copies it into the broker headers.
* ``send <topic>`` (``PRODUCER``), around the relay's broker send of a batch, with a link
  to each event's ``create`` span.
* ``process <topic>`` (``CONSUMER``), around one run of the handler, linked to the event's
  ``create`` span and current while the handler runs: what the handler does (queries,
  calls, events it publishes) nests under it, so a chain of events stays navigable.

The consumer span is *linked* to the producer rather than a child of it: an event may be
handled minutes later, several times, by another process, and a link keeps the request's
trace from growing for as long as the outbox holds the event.

Nothing in the rest of outboxkit imports this module or OpenTelemetry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "outboxkit.observability.otel needs OpenTelemetry: pip install 'outboxkit[otel]'"
    ) from exc

from outboxkit import __version__
from outboxkit.broker import BrokerMessage
from outboxkit.messages import Event, PublishRequest
from outboxkit.observability.tracing import Tracing
from outboxkit.routing import Route

#: ``messaging.system`` when none is given: the outbox is the messaging system callers see.
DEFAULT_MESSAGING_SYSTEM = "outboxkit"

AttributeMap = dict[str, str | int]


class OpenTelemetryTracing(Tracing):
    """The :class:`~outboxkit.observability.tracing.Tracing` hooks, done with OpenTelemetry.

    ``tracer_provider`` defaults to the global one; ``messaging_system`` is reported as
    ``messaging.system`` (say ``"kafka"`` or ``"redis"`` to match your broker). The trace
    context is always carried in W3C Trace Context format, whatever global propagator the
    application set, because the relay and the consumer may run other code than the
    publisher (the Go relay passes the headers through untouched).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        messaging_system: str = DEFAULT_MESSAGING_SYSTEM,
    ) -> None:
        self._tracer = trace.get_tracer("outboxkit", __version__, tracer_provider=tracer_provider)
        self._system = messaging_system
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def publishing(self, request: PublishRequest, route: Route) -> Iterator[Mapping[str, str]]:
        attributes = self._common("create", route)
        attributes["messaging.message.id"] = request.event_id
        attributes["outboxkit.event_type"] = request.event_type
        _flow_ids(attributes, request.correlation_id, request.causation_id)
        if request.message_key:
            attributes["outboxkit.message_key"] = request.message_key
        # Not made current: a batch opens several of these at once and they must be
        # siblings, not each other's children.
        span = self._tracer.start_span(
            f"create {route.topic}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        try:
            yield carrier
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def sending(self, route: Route, messages: Sequence[BrokerMessage]) -> Iterator[None]:
        attributes = self._common("send", route)
        if len(messages) > 1:
            attributes["messaging.batch.message_count"] = len(messages)
        links = [link for m in messages if (link := self._link(m.headers)) is not None]
        with self._tracer.start_as_current_span(
            f"send {route.topic}",
            kind=trace.SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
        ):
            yield

    @contextlib.contextmanager
    def processing(self, route: Route, event: Event) -> Iterator[None]:
        attributes = self._common("process", route)
        attributes["messaging.consumer.group.name"] = route.group
        attributes["messaging.message.id"] = event.event_id
        attributes["outboxkit.event_type"] = event.event_type
        attributes["outboxkit.outbox_id"] = event.outbox_id
        attributes["outboxkit.attempt"] = event.attempt
        _flow_ids(attributes, event.correlation_id, event.causation_id)
        link = self._link(event.headers)
        with self._tracer.start_as_current_span(
            f"process {route.topic}",
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=[link] if link is not None else [],
        ):
            yield

    # ----------------------------------------------------------------- internals

    def _common(self, operation: str, route: Route) -> AttributeMap:
        return {
            "messaging.system": self._system,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": route.topic,
            "outboxkit.service": route.service,
            "outboxkit.table": route.table,
        }

    def _link(self, headers: Mapping[str, str]) -> trace.Link | None:
        """A link to the span whose context ``headers`` carry, if they carry a valid one."""
        context = self._propagator.extract(carrier=dict(headers))
        span_context = trace.get_current_span(context).get_span_context()
        return trace.Link(span_context) if span_context.is_valid else None


def _flow_ids(attributes: AttributeMap, correlation_id: str, causation_id: str) -> None:
    # The semantic conventions' name for a correlation id is the conversation id.
    if correlation_id:
        attributes["messaging.message.conversation_id"] = correlation_id
    if causation_id:
        attributes["outboxkit.causation_id"] = causation_id


def _fail(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
