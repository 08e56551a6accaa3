"""Handling an event at once, in the caller's transaction: a disabled engine's publish.

``EngineConfig(enabled=False)`` mirrors the Go ``kafka.enabled=false`` fallback: no broker, no
threads, and :meth:`~outboxkit.Engine.publish` runs the local handler of each event right
away. The event takes the same round trip a relayed one does (payload encoded, then decoded
into the handler's type), and a transactional handler is checked as a consumer checks it
(:mod:`outboxkit.consume.handler_scope`): one that committed or rolled back the caller's
transaction, or dropped unflushed ORM changes, raises to the caller.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.handler_scope import HandlerScope
from outboxkit.consume.handler_shapes import call_with_session
from outboxkit.consume.registry import HandlerRegistry, HandlerSpec
from outboxkit.errors import ConfigurationError
from outboxkit.messages import Event, PublishRequest
from outboxkit.publish.causality import handled_event, handling, with_flow_ids
from outboxkit.store import OutboxWriter
from outboxkit.wire.payloads import PayloadCodecs, decode_payload


class InlineHandling:
    """Runs the local handlers of published events in the caller's transaction."""

    def __init__(
        self,
        registry: HandlerRegistry,
        writer: OutboxWriter,
        *,
        codecs: PayloadCodecs,
        consumer: ConsumerConfig,
    ) -> None:
        self.registry = registry
        #: Opens the transaction of a publish without a connection.
        self.writer = writer
        self.codecs = codecs
        self.consumer = consumer

    def handle_many(
        self, requests: Sequence[PublishRequest], connection: Connection | Session | None
    ) -> list[str]:
        """Handle each request, in order; their event ids. Raises
        :class:`~outboxkit.errors.ConfigurationError` before any runs when a type has no
        handler in this process (the event would otherwise be dropped)."""
        missing = sorted({r.event_type for r in requests} - set(self.registry.event_types()))
        if missing:
            raise ConfigurationError(
                f"outbox is disabled and this process has no handler for {missing}"
            )
        return [self._handle(r, connection) for r in requests]

    def _handle(self, request: PublishRequest, connection: Connection | Session | None) -> str:
        spec = self.registry.get(request.event_type)
        assert spec is not None  # checked by handle_many
        conn = connection.connection() if isinstance(connection, Session) else connection
        request = with_flow_ids(request, handled_event(conn))
        # The same round trip a relayed event makes, so a disabled engine decodes alike.
        codec = self.codecs.for_type(request.event_type)
        event = Event(
            event_id=request.event_id,
            outbox_id=0,
            event_type=request.event_type,
            event_version=request.event_version,
            service_name=spec.service,
            aggregate_id=request.aggregate_id,
            message_key=request.message_key,
            payload=codec.encode(request.payload),
            headers=request.headers,
            attempt=1,
            occurred_at=None,
            correlation_id=request.correlation_id,
            causation_id=request.causation_id,
        )
        if spec.payload_type is not None:
            event = decode_payload(event, spec.payload_type, self.codecs)
        if not spec.transactional:
            with handling(event):
                spec.func(event)
        elif conn is not None:
            if isinstance(connection, Session):
                # The handler stands in for a consumer that runs after the commit: it sees
                # what the caller's session wrote.
                connection.flush()
            self._run(spec, event, conn)
        else:
            with self.writer.transaction() as own:
                self._run(spec, event, own)
        return request.event_id

    def _run(self, spec: HandlerSpec, event: Event, connection: Connection) -> None:
        func = spec.func
        if spec.session:
            factory = self.consumer.session_factory
            func = functools.partial(call_with_session, func, session_factory=factory)
        scope = HandlerScope(connection)
        with handling(event, connection), scope:
            func(event, connection)
        problem = scope.problem()
        if problem is not None:
            raise problem
