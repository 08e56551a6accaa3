"""The consumer: run the registered handler for each delivery of one service's topic.

Every delivery ends in exactly one recorded outcome before it is acknowledged:

* handler returned -> ``consumed`` (transactional handlers: in the same transaction as the
  handler's own writes, so the effect happens once however often the event is delivered);
* handler raised :class:`~outboxkit.errors.PermanentError` -> ``dead`` with the reason;
* handler raised anything else -> the row goes back to ``pending`` with a backoff and the
  relay publishes it again (retries flow through the database, as in the Go design, so a
  poison message never blocks the partition);
* row already ``consumed``/``dead`` -> duplicate, nothing runs;
* the message names a row that holds another event (event id or type differ: a forged or
  stray message, a topic that outlived its table) -> logged with both ids and acknowledged,
  the row untouched;
* undecodable message or unknown event type -> ``dead`` when the row is that very event,
  else logged; either way acknowledged, so one bad message never stops the consumer.

Transactional handlers of a received batch run in **one** database transaction
(:meth:`~outboxkit.store.Repository.consume_batch`: one lock statement, one mark, one
commit, a savepoint per handler only after a failure), and the batch is acknowledged with
one :meth:`~outboxkit.broker.Subscription.ack_many`. Only a handler's own exception counts
as a failed attempt: a database that is down or a connection killed under the batch
leaves every delivery unacknowledged and every row uncounted.

If the outcome cannot be recorded (the database is down), the delivery is **not**
acknowledged and :class:`~outboxkit.errors.RepositoryError` propagates: the engine then
drops the subscription and subscribes again after a pause, so the broker delivers the
message again rather than a later acknowledgement silently covering it.

**Overlap.** When a receive comes back full (a backlog), the next batch is received on a
helper thread while this one is recorded, so the broker's reply (and its parsing) overlaps
the database's work instead of adding to it. The subscription is still used by one thread at
a time: while a receive runs ahead, this batch's acknowledgement queues behind it on the
same helper. A batch received ahead is handled by the next :meth:`Consumer.run_once` on the
same subscription, in order; if the subscription changes (the engine drops it after a
failure) or the consumer closes, that batch is left unacknowledged and comes again, as after
a crash.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import attrs
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.broker import Delivery, Subscription
from outboxkit.consume.handler_shapes import SessionFactory, call_with_session
from outboxkit.consume.registry import HandlerRegistry, HandlerSpec
from outboxkit.errors import DecodeError, PermanentError
from outboxkit.helper_thread import HelperThread
from outboxkit.messages import Event, Outcome
from outboxkit.observability.logs import event_fields, hide_parameters
from outboxkit.observability.tracing import NO_TRACING, Tracing
from outboxkit.publish.causality import handling
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.store import ConsumeItem, ConsumeResult, ConsumeStore
from outboxkit.wire.envelope import Envelope, decode_envelope, row_event_id
from outboxkit.wire.payloads import PayloadCodecs, decode_payload

logger = logging.getLogger(__name__)

#: Consecutive deliveries whose row is missing after which the consumer says, at ERROR,
#: that it is probably reading another database than its producers write.
MISSING_STREAK_ALARM = 10


@attrs.frozen(kw_only=True)
class ConsumerConfig:
    """Knobs of one consumer thread."""

    #: Deliveries fetched per receive.
    batch_size: int = attrs.field(default=100, validator=attrs.validators.gt(0))
    #: Longest wait of one receive; also bounds how fast a stop is noticed.
    receive_timeout: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    #: First and longest pause while the broker or database is unreachable.
    outage_backoff: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    outage_backoff_max: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Receive the next batch while this one is recorded, when this receive came back full.
    prefetch: bool = True
    #: Makes the session of a handler whose second parameter is a ``Session``:
    #: ``session_factory(bind=connection, join_transaction_mode="rollback_only")``. A
    #: ``sessionmaker`` of the application's fits (its other options are kept).
    session_factory: SessionFactory = attrs.field(default=Session, eq=False)


#: Longest wait of a receive running ahead. The batch's acknowledgement queues behind it,
#: so a backlog that just ran out delays one acknowledgement by at most this; an empty
#: receive ahead is followed by an ordinary one.
_AHEAD_WAIT = 0.05


class Consumer:
    """Handles deliveries of one service. One instance per consumer thread."""

    def __init__(
        self,
        repository: ConsumeStore,
        route: Route,
        registry: HandlerRegistry,
        *,
        config: ConsumerConfig | None = None,
        retry_policy: RetryPolicy | None = None,
        on_outcome: Callable[[Event | None, Outcome], None] | None = None,
        tracing: Tracing = NO_TRACING,
        codecs: PayloadCodecs | None = None,
    ) -> None:
        self.codecs = codecs or PayloadCodecs()
        self.repository = repository
        self.route = route
        self.registry = registry
        self.config = config or ConsumerConfig()
        self.retry_policy = retry_policy or RetryPolicy()
        self._on_outcome = on_outcome
        self.tracing = tracing
        #: Deliveries acknowledged without handling because their row was not found, in
        #: all and in a row (a streak means a misplaced consumer, see ``_settle``).
        self.missing_rows = 0
        self._missing_streak = 0
        self._receiver: HelperThread | None = None
        #: The batch being received ahead, and the subscription it is received from.
        self._ahead: tuple[Subscription, Future[list[Delivery]]] | None = None

    def run_once(
        self,
        subscription: Subscription,
        *,
        timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Receive one batch, handle it, acknowledge what was handled; return how many.

        The batch's transactional handlers run in one database transaction and the batch is
        acknowledged at once (:meth:`Subscription.ack_many`). If the outcomes cannot be
        recorded, nothing is acknowledged and the error propagates (the deliveries come
        again). When ``should_stop`` turns true, the rest of the batch is left
        unacknowledged too (it is delivered again later).
        """
        wait = self.config.receive_timeout if timeout is None else timeout
        deliveries = self._receive(subscription, wait)
        if not deliveries or (should_stop is not None and should_stop()):
            return 0
        if self.config.prefetch and len(deliveries) >= self.config.batch_size:
            self._receive_ahead(subscription, wait)
        outcomes = self.handle_batch(deliveries, should_stop=should_stop)
        handled = deliveries[: len(outcomes)]
        if handled:
            self._acknowledge(subscription, handled)
        return len(handled)

    def close(self) -> None:
        """Stop the helper thread; a batch received ahead stays unacknowledged (it comes
        again). Closing the subscription first makes a receive still running return."""
        self._ahead = None
        if self._receiver is not None:
            self._receiver.shutdown()
            self._receiver = None

    def _receive(self, subscription: Subscription, timeout: float) -> list[Delivery]:
        """The batch received ahead from this subscription (its error, if it failed), else
        (none, or it came back empty) a new receive."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is subscription:
            deliveries = ahead[1].result()
            if deliveries:
                return deliveries
        # Received ahead from a subscription since dropped: left unacknowledged. The helper
        # finishes that receive before it runs anything else, and nothing new is sent to it
        # until the next receive ahead, so this subscription is still used by one thread.
        return subscription.receive(timeout=timeout, max_messages=self.config.batch_size)

    def _receive_ahead(self, subscription: Subscription, timeout: float) -> None:
        if self._receiver is None:
            self._receiver = HelperThread(f"outboxkit-consumer-receive-{self.route.service}")
        future = self._receiver.submit(
            subscription.receive,
            timeout=min(timeout, _AHEAD_WAIT),
            max_messages=self.config.batch_size,
        )
        self._ahead = (subscription, future)

    def _acknowledge(self, subscription: Subscription, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge on the caller's thread, or behind a receive running ahead (one thread
        at a time on a subscription)."""
        if self._ahead is None or self._receiver is None:
            subscription.ack_many(deliveries)
        else:
            self._receiver.submit(subscription.ack_many, deliveries).result()

    def handle(self, delivery: Delivery) -> Outcome:
        """Record the outcome of one delivery in the database (does not acknowledge it)."""
        return self.handle_batch([delivery])[0]

    def handle_batch(
        self, deliveries: Sequence[Delivery], *, should_stop: Callable[[], bool] | None = None
    ) -> list[Outcome]:
        """Record the outcome of each delivery, in order; does not acknowledge them.

        Returns the outcomes of the deliveries handled, a prefix of ``deliveries`` (shorter
        only when ``should_stop`` turned true). Consecutive deliveries with transactional
        handlers go to :meth:`Repository.consume_batch` together; a side-effect handler is
        run on its own, between them, so every key's events run in the order received.
        Raises :class:`~outboxkit.errors.RepositoryError` when the database cannot record
        an outcome; nothing was acknowledged and the deliveries will come again.
        """
        # Outcomes by delivery position: a delivery settled at once (undecodable, unknown
        # type, ...) may come after transactional ones still waiting in the segment, and
        # only a prefix of settled deliveries may be acknowledged.
        settled: list[Outcome | None] = [None] * len(deliveries)
        segment: list[tuple[int, Event, HandlerSpec]] = []

        def flush() -> bool:
            done = self._consume_segment([(e, spec) for _, e, spec in segment], should_stop)
            for (index, _, _), outcome in zip(segment, done, strict=False):  # done: a prefix
                settled[index] = outcome
            complete = len(done) == len(segment)
            segment.clear()
            return complete

        for index, delivery in enumerate(deliveries):
            prepared = self._prepare(delivery)
            if isinstance(prepared, Outcome):
                settled[index] = prepared
                continue
            event, spec = prepared
            if spec.transactional:
                segment.append((index, event, spec))
                continue
            if not flush() or (should_stop is not None and should_stop()):
                break
            settled[index] = self._report(event, self._run_side_effect(spec, event))
        else:
            flush()
        outcomes: list[Outcome] = []
        for outcome in settled:
            if outcome is None:
                break
            outcomes.append(outcome)
        return outcomes

    # ----------------------------------------------------------------- internals

    def _prepare(self, delivery: Delivery) -> Outcome | tuple[Event, HandlerSpec]:
        """Decode and route one delivery; an outcome when nothing is left to run."""
        try:
            envelope = decode_envelope(delivery.value)
        except DecodeError as exc:
            return self._report(None, self._undecodable(delivery, exc))
        event = _event(envelope, delivery)
        if envelope.service_name and envelope.service_name != self.route.service:
            logger.warning(
                "skipping event %s (%s) of service %r on %s: this consumer serves %r; "
                "acknowledged without handling. Likely cause: two services share this topic "
                "(a topic override or namespace that collides, or another system's producer "
                "writing here)",
                event.event_id,
                event.event_type,
                envelope.service_name,
                delivery.topic,
                self.route.service,
            )
            return self._report(event, Outcome.SKIPPED)
        spec = self.registry.get(event.event_type)
        if spec is None or spec.service != self.route.service:
            reason = f"no handler registered in service {self.route.service}: {event.event_type}"
            return self._report(event, self._dead(event, reason))
        if spec.payload_type is not None:
            try:  # deterministic: a payload that does not fit never will, so no retries
                event = decode_payload(event, spec.payload_type, self.codecs)
            except DecodeError as exc:
                return self._report(event, self._dead(event, f"undecodable payload: {exc}"))
        return event, spec

    def _consume_segment(
        self, segment: Sequence[tuple[Event, HandlerSpec]], should_stop: Callable[[], bool] | None
    ) -> list[Outcome]:
        """Run a run of transactional handlers in one transaction; outcomes of those handled."""
        if not segment:
            return []
        items = [
            ConsumeItem(
                outbox_id=event.outbox_id,
                event_id=event.event_id,
                event_type=event.event_type,
                run=self._bind(spec, event),
            )
            for event, spec in segment
        ]
        results = self.repository.consume_batch(self.route, items, should_stop=should_stop)
        outcomes: list[Outcome] = []
        for (event, _spec), result in zip(segment, results, strict=True):
            if result.outcome is Outcome.NOT_RUN:
                break
            outcomes.append(self._report(event, self._settle(event, result)))
        return outcomes

    def _settle(self, event: Event, result: ConsumeResult[Any]) -> Outcome:
        """Turn one :meth:`Repository.consume_batch` result into a recorded outcome."""
        outcome = result.outcome
        if outcome is Outcome.MISSING:
            return self._missing(event)
        self._missing_streak = 0
        if outcome is Outcome.CONSUMED:
            self._log(logging.DEBUG, event, "consumed")
            return Outcome.CONSUMED
        if outcome is Outcome.FAILED:
            error = result.error
            assert error is not None
            if isinstance(error, PermanentError):
                return self._dead(event, f"permanent failure: {error}", exc=error)
            return self._retry(event, error)
        if outcome is Outcome.MISMATCH:
            logger.warning(
                "event %s (%s) names outbox row %s of %s, which holds another event; "
                "acknowledged without handling, the row untouched (a forged or stray "
                "message, or a topic that outlived its table)",
                event.event_id,
                event.event_type,
                event.outbox_id,
                self.route.table,
            )
            return Outcome.SKIPPED
        self._log(logging.DEBUG, event, "a duplicate, acknowledged")
        return Outcome.DUPLICATE

    def _missing(self, event: Event) -> Outcome:
        """A delivery whose row is not in this database: say so, and why it may be."""
        self.missing_rows += 1
        self._missing_streak += 1
        logger.warning(
            "event %s (%s) of service %s: outbox row %s not found in %s; acknowledged without "
            "handling. Likely cause: this consumer reads another database than its producer "
            "writes (consume through an inbox, see docs/inbox.md), or the table was rebuilt "
            "or purged under a live topic",
            event.event_id,
            event.event_type,
            self.route.service,
            event.outbox_id,
            self.route.table,
        )
        if self._missing_streak == MISSING_STREAK_ALARM:
            logger.error(
                "the last %d events of service %s named rows missing from %s: this consumer "
                "is almost certainly pointed at another database or namespace than its "
                "producers; their rows stay published and are republished until dead. "
                "Point it at the producers' database, or configure the service with "
                "inbox=True and give the engine an inbox (docs/inbox.md)",
                MISSING_STREAK_ALARM,
                self.route.service,
                self.route.table,
            )
        return Outcome.SKIPPED

    def _run_side_effect(self, spec: HandlerSpec, event: Event) -> Outcome:
        """Run a non-transactional handler, then mark the row consumed (at-least-once).

        Only the handler's own exception counts as a failed attempt; a database error
        while reading or marking the row propagates uncounted.
        """
        row = self.repository.get(self.route, event.outbox_id)
        if row is None:
            return self._settle(event, ConsumeResult(Outcome.MISSING))
        same = row.event_type == event.event_type and (
            row_event_id(row.id, row.event_id, row.payload) == event.event_id
        )
        if not same:
            return self._settle(event, ConsumeResult(Outcome.MISMATCH))
        if row.status.value in ("consumed", "dead"):
            return self._settle(event, ConsumeResult(Outcome.DUPLICATE))
        try:
            with handling(event), self.tracing.processing(self.route, event):
                spec.func(event)
        except Exception as exc:
            return self._settle(event, ConsumeResult(Outcome.FAILED, error=exc))
        if self.repository.mark_consumed(self.route, event.outbox_id, event_id=event.event_id):
            return self._settle(event, ConsumeResult(Outcome.CONSUMED))
        return self._settle(event, ConsumeResult(Outcome.DUPLICATE))

    def _retry(self, event: Event, exc: BaseException) -> Outcome:
        hide_parameters(exc)  # a handler's SQL error must not put its parameters in logs
        reason = f"consume handling failed: {type(exc).__name__}: {exc}"
        outcome = self.repository.schedule_retry(
            self.route, event.outbox_id, reason=reason, backoff=self.retry_policy.delay
        )
        if outcome is Outcome.DEAD:
            self._log(logging.ERROR, event, f"dead after {event.attempt} attempts: {reason}", exc)
            return Outcome.DEAD
        if outcome is Outcome.RETRY:
            what = f"attempt {event.attempt} failed, retry scheduled: {reason}"
            self._log(logging.WARNING, event, what, exc)
            return Outcome.RETRY
        return Outcome.DUPLICATE

    def _log(self, level: int, event: Event, what: str, exc: BaseException | None = None) -> None:
        """One line about one event: id, type, service and topic in the text and as extras
        (see :mod:`outboxkit.observability.logs`); ``exc`` adds the handler's traceback."""
        logger.log(
            level,
            "event %s (%s) of service %s, outbox row %s, topic %s: %s",
            event.event_id,
            event.event_type,
            self.route.service,
            event.outbox_id,
            self.route.topic,
            what,
            exc_info=exc,
            extra=event_fields(
                event_id=event.event_id,
                event_type=event.event_type,
                service=self.route.service,
                topic=self.route.topic,
                outbox_id=event.outbox_id,
            ),
        )

    def _dead(self, event: Event, reason: str, *, exc: BaseException | None = None) -> Outcome:
        marked = self.repository.mark_dead(
            self.route, event.outbox_id, reason=reason, event_id=event.event_id
        )
        if marked:
            self._log(logging.ERROR, event, f"marked dead: {reason}", exc)
            return Outcome.DEAD
        logger.warning(
            "event %s (%s) not marked dead (%s): outbox row %s of %s is final, missing or "
            "another event",
            event.event_id,
            event.event_type,
            reason,
            event.outbox_id,
            self.route.table,
        )
        return Outcome.DUPLICATE

    def _undecodable(self, delivery: Delivery, exc: DecodeError) -> Outcome:
        same_service = exc.service_name in (None, self.route.service)
        if exc.outbox_id is not None and exc.event_id and same_service:
            # Only a message that names the row's own event id may condemn it.
            reason = f"undecodable message: {exc.reason}"
            marked = self.repository.mark_dead(
                self.route, exc.outbox_id, reason=reason, event_id=exc.event_id
            )
            if marked:
                logger.error(
                    "outbox row %s of %s marked dead: %s", exc.outbox_id, self.route.table, reason
                )
                return Outcome.DEAD
        logger.error(
            "undecodable message on %s (receipt %r, outbox id %s, event id %s), acknowledged "
            "without touching any row: %s",
            delivery.topic,
            delivery.receipt,
            exc.outbox_id,
            exc.event_id,
            exc.reason,
        )
        return Outcome.SKIPPED

    def _bind(self, spec: HandlerSpec, event: Event) -> Callable[[Connection], Any]:
        """The call of ``spec``'s handler on the consume transaction's connection."""
        func = spec.func
        if spec.session:
            factory = self.config.session_factory
            func = functools.partial(call_with_session, func, session_factory=factory)
        if self.tracing is NO_TRACING:  # a no-op span per event still costs: skip it

            def run_untraced(connection: Connection) -> Any:
                # What the handler publishes joins event's flow.
                with handling(event, connection):
                    return func(event, connection)

            return run_untraced

        def run(connection: Connection) -> Any:
            # What the handler publishes joins event's flow and its trace.
            with handling(event, connection), self.tracing.processing(self.route, event):
                return func(event, connection)

        return run

    def _report(self, event: Event | None, outcome: Outcome) -> Outcome:
        if self._on_outcome is not None:
            try:
                self._on_outcome(event, outcome)
            except Exception:
                logger.exception("on_outcome callback failed")
        return outcome


def _event(envelope: Envelope, delivery: Delivery) -> Event:
    return Event(
        event_id=envelope.event_id,
        outbox_id=envelope.outbox_id,
        event_type=envelope.event_type,
        event_version=envelope.event_version,
        service_name=envelope.service_name,
        aggregate_id=envelope.aggregate_id,
        message_key=delivery.key,
        payload=envelope.payload,
        headers=envelope.headers,
        attempt=max(envelope.attempt, 1),
        occurred_at=envelope.occurred_at,
        published_at=envelope.published_at,
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id,
    )
