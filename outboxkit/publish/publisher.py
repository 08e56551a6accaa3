"""Publishing: write events as outbox rows, in the caller's transaction when given one.

The one guarantee that makes the outbox pattern work is here: with a ``connection`` (or an
ORM ``Session``), the row is written inside the caller's open transaction, so it exists if
and only if the business change commits. :class:`Publisher` never commits or rolls back a
transaction it did not open.

Everything that can be checked is checked before anything is written, so a bad request in
a batch writes nothing at all (and never leaves the caller's transaction aborted).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Literal

import attrs
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.errors import InvalidEventError
from outboxkit.messages import DEFAULT_MAX_RETRY, MAX_EVENT_ID, PublishRequest, with_fields
from outboxkit.observability.tracing import NO_TRACING, Tracing
from outboxkit.publish.causality import handled_event, with_flow_ids
from outboxkit.publish.checks import check_executor, report_conflict, report_conflicts
from outboxkit.routing import MAX_EVENT_TYPE, MAX_MESSAGE_KEY, Route, Routing
from outboxkit.store import NewMessage, OutboxWriter
from outboxkit.wire.envelope import encode_shell
from outboxkit.wire.payloads import JsonPayloadCodec, PayloadCodecs

logger = logging.getLogger(__name__)

#: Largest encoded event shell accepted, in bytes (stays under Kafka's default 1 MB message
#: limit, ``max_request_size`` / ``message.max.bytes``, once wrapped in the envelope).
DEFAULT_MAX_PAYLOAD_BYTES = 900_000


@attrs.frozen(kw_only=True)
class PublisherConfig:
    """Limits applied to every published event.

    ``max_payload_bytes`` (default 900,000) is measured on the UTF-8 encoded event shell
    (what the ``payload`` column stores): a bigger event is refused with
    :class:`~outboxkit.errors.InvalidEventError` before anything is written. Raising it
    needs a broker that accepts the bigger message too (Kafka's default is 1 MB:
    ``KafkaConfig.max_request_size`` and the topic's ``max.message.bytes``); an event the
    broker refuses for size goes ``dead``. ``max_retry`` is frozen into each row, as in Go.

    ``max_retry`` counts attempts **in all**, the first included: with ``max_retry=3`` a
    handler that always fails runs three times, then the row goes ``dead``. (The name is
    the Go column's.) Every counted failure is an attempt: a handler that raised, a message
    the broker refused (one it refuses for good goes ``dead`` at once), a published row
    rescued because no outcome came back.
    """

    max_payload_bytes: int = attrs.field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, validator=attrs.validators.ge(1)
    )
    max_retry: int = attrs.field(default=DEFAULT_MAX_RETRY, validator=attrs.validators.ge(1))
    #: ``True`` makes a publish without ``connection=`` a ``TypeError``: the row would be
    #: written in a transaction of its own, outside the caller's business change.
    require_connection: bool = False
    #: What to do when an event id is published again with a different payload (the first
    #: payload is kept either way): ``"warn"`` logs both digests, ``"error"`` raises
    #: :class:`~outboxkit.errors.PayloadConflictError`, ``"ignore"`` says nothing.
    on_payload_conflict: Literal["warn", "error", "ignore"] = attrs.field(
        default="warn", validator=attrs.validators.in_(("warn", "error", "ignore"))
    )


Executor = Connection | Session


class Publisher:
    """Writes :class:`~outboxkit.messages.PublishRequest` objects as ``pending`` outbox rows.

    Thread-safe (it holds only the repository, the routing and the config). Publishing an
    ``event_id`` that is already in the table writes nothing and returns the same id, so a
    request may be retried freely.
    """

    def __init__(
        self,
        repository: OutboxWriter,
        routing: Routing,
        *,
        config: PublisherConfig | None = None,
        tracing: Tracing = NO_TRACING,
        codecs: PayloadCodecs | None = None,
    ) -> None:
        self.repository = repository
        self.routing = routing
        self.config = config or PublisherConfig()
        self.tracing = tracing
        self.codecs = codecs or PayloadCodecs()

    def publish(self, request: PublishRequest, *, connection: Executor | None = None) -> str:
        """Write one event; returns its ``event_id``. See :meth:`publish_many`."""
        return self.publish_many([request], connection=connection)[0]

    def publish_many(
        self, requests: Iterable[PublishRequest], *, connection: Executor | None = None
    ) -> list[str]:
        """Write several events; returns their ``event_id`` values in request order.

        With ``connection`` (a SQLAlchemy ``Connection`` or ORM ``Session``) the rows are
        written in its open transaction and nothing is committed; without one, in a short
        transaction of the repository's own. All requests are validated first: any
        :class:`~outboxkit.errors.InvalidEventError` or
        :class:`~outboxkit.errors.UnknownEventTypeError` means nothing was written. Rows
        are grouped by route (one table per service) with one multi-row insert per table.
        Empty correlation and causation ids are filled from the event being handled on
        ``connection`` or in this context, if any (:mod:`outboxkit.publish.causality`).
        """
        check_executor(connection, required=self.config.require_connection)
        batch = list(requests)
        if not batch:
            return []
        conn = connection.connection() if isinstance(connection, Session) else connection
        cause = handled_event(conn)
        occurred_at = datetime.now(timezone.utc)
        groups: dict[str, tuple[Route, list[NewMessage]]] = {}
        seen: dict[str, NewMessage] = {}
        with contextlib.ExitStack() as spans:  # a tracing span per event, ended after the write
            for request in batch:
                flow = with_flow_ids(request, cause)
                route, message = self._prepare(flow, occurred_at, spans)
                first = seen.get(message.event_id)
                if first is not None:  # the first of a batch wins, as the first row would
                    mode = self.config.on_payload_conflict
                    report_conflict(
                        route.table, first.event_id, first.payload, message.payload, mode
                    )
                    continue
                seen[message.event_id] = message
                groups.setdefault(route.table, (route, []))[1].append(message)
            if conn is None:
                with self.repository.transaction() as own:
                    self._write(own, groups)
            elif self.config.on_payload_conflict == "error":
                # The conflict is known only once the rows are inserted: a savepoint takes
                # them back, so PayloadConflictError, like every InvalidEventError, means
                # nothing was written, even for a caller who catches it and commits.
                with conn.begin_nested():
                    self._write(conn, groups)
            else:
                self._write(conn, groups)
        return [r.event_id for r in batch]

    def _write(self, conn: Connection, groups: dict[str, tuple[Route, list[NewMessage]]]) -> None:
        for route, messages in groups.values():
            results = self.repository.add(conn, route, messages)
            report_conflicts(route, messages, results, self.config.on_payload_conflict)
            created = sum(1 for r in results if r.created)
            logger.debug(
                "outbox: wrote %d of %d events to %s (%d already known)",
                created,
                len(results),
                route.table,
                len(results) - created,
            )

    def _prepare(
        self, request: PublishRequest, occurred_at: datetime, spans: contextlib.ExitStack
    ) -> tuple[Route, NewMessage]:
        """Validate ``request`` and build its row; raises before anything is written.

        The tracing hook's span is entered on ``spans`` once the route is known; the headers
        it gives (trace context) are stored in the shell, where the relay and the consumer
        find them. Headers the request already has win.
        """
        event_type = request.event_type
        if not event_type:
            raise InvalidEventError(f"event {request.event_id}: event type is empty")
        if len(event_type) > MAX_EVENT_TYPE:
            raise InvalidEventError(
                f"event {request.event_id}: event type {event_type[:80]!r}... is longer than "
                f"{MAX_EVENT_TYPE} characters"
            )
        if len(request.event_id) > MAX_EVENT_ID:
            raise InvalidEventError(
                f"event id {request.event_id[:80]!r}... ({event_type}) is longer than "
                f"{MAX_EVENT_ID} characters"
            )
        if len(request.message_key) > MAX_MESSAGE_KEY:
            raise InvalidEventError(
                f"event {request.event_id} ({event_type}): message key is longer than "
                f"{MAX_MESSAGE_KEY} characters"
            )
        for name, text in (
            ("event type", event_type),
            ("event id", request.event_id),
            ("message key", request.message_key),
        ):
            if "\x00" in text:
                # PostgreSQL text columns cannot hold NUL; refuse it on every database alike.
                raise InvalidEventError(
                    f"event {request.event_id!r} ({event_type!r}): {name} contains a NUL character"
                )
        route = self.routing.route_of(event_type)  # UnknownEventTypeError
        codec = self.codecs.for_type(event_type)
        try:
            payload = codec.encode(request.payload)
        except InvalidEventError as exc:
            raise InvalidEventError(f"event {request.event_id} ({event_type}): {exc}") from exc
        # The default codec hands back the very object only after checking that it is
        # plain JSON with string keys: the shell need not walk it again.
        keys_checked = type(codec) is JsonPayloadCodec and payload is request.payload
        if payload is not request.payload:
            request = with_fields(request, payload=payload)
        if self.tracing is not NO_TRACING:  # a span per event costs; skip the no-op one
            traced = spans.enter_context(self.tracing.publishing(request, route))
            if traced:
                request = with_fields(request, headers={**traced, **request.headers})
        shell = encode_shell(  # InvalidEventError
            request, occurred_at=occurred_at, keys_checked=keys_checked
        )
        # A UTF-8 character is at most 4 bytes: short shells need no encoding to measure.
        size = len(shell) * 4
        if size > self.config.max_payload_bytes:
            size = len(shell.encode("utf-8"))
        if size > self.config.max_payload_bytes:
            limit = self.config.max_payload_bytes
            raise InvalidEventError(
                f"event {request.event_id} ({event_type}) is {size} bytes encoded, over the "
                f"limit of {limit} bytes set by PublisherConfig(max_payload_bytes={limit}) "
                "(in EngineConfig(publisher=...)): publish a smaller payload (a reference to "
                "data stored elsewhere), or raise the limit, and the broker's with it"
            )
        return route, NewMessage(
            event_id=request.event_id,
            event_type=event_type,
            message_key=request.message_key,
            payload=shell,
            max_retry=self.config.max_retry,
        )
