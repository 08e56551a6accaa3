"""The consume loop: receive a batch of one service's topic, run the registered handler of each
event, record the outcomes, acknowledge. Written once, for every service: where outcomes land
(the producer's outbox row, or an inbox of the consumer's own database) is the
:class:`~outboxkit.consume.ledger.Ledger` the loop is given.

Every delivery ends in exactly one recorded outcome before it is acknowledged (see the
ledgers for which): consumed, a retry, dead, a duplicate (final already, nothing runs) or
skipped (not this consumer's event: another service's, a row that holds another event, an
undecodable message). One bad message never stops the consumer.

Transactional handlers of a received batch run in **one** database transaction
(:meth:`Ledger.consume`: one lock statement, one mark, one commit, a savepoint per handler
only after a failure), and the batch is acknowledged with one
:meth:`~outboxkit.broker.Subscription.ack_many`. Only a handler's own exception counts as a
failed attempt: a database that is down or a connection killed under the batch leaves every
delivery unacknowledged and every event uncounted.

If the outcome cannot be recorded (the database is down), the delivery is **not**
acknowledged and :class:`~outboxkit.errors.RepositoryError` propagates: the engine then
drops the subscription and subscribes again after a pause, so the broker delivers the
message again rather than a later acknowledgement silently covering it. With a ledger whose
failed attempts the broker redelivers (an inbox), the deliveries from the first failed one
on stay unacknowledged and :class:`~outboxkit.inbox.RedeliveryRequested` asks the same.

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

from sqlalchemy.engine import Connection

from outboxkit.broker import Delivery, Subscription
from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.handler_shapes import call_with_session
from outboxkit.consume.ledger import Ledger, Run
from outboxkit.consume.registry import HandlerRegistry, HandlerSpec
from outboxkit.errors import DecodeError, RedeliveryRequested
from outboxkit.helper_thread import HelperThread
from outboxkit.messages import Event, Outcome
from outboxkit.observability.tracing import NO_TRACING, Tracing
from outboxkit.publish.causality import handling
from outboxkit.store import ConsumeResult
from outboxkit.wire.envelope import Envelope, decode_envelope
from outboxkit.wire.payloads import PayloadCodecs, decode_payload

logger = logging.getLogger(__name__)

#: Longest wait of a receive running ahead. The batch's acknowledgement queues behind it,
#: so a backlog that just ran out delays one acknowledgement by at most this; an empty
#: receive ahead is followed by an ordinary one.
_AHEAD_WAIT = 0.05


class Consumer:
    """Handles deliveries of one service, recording outcomes in ``ledger``. One instance per
    consumer thread."""

    def __init__(
        self,
        ledger: Ledger,
        registry: HandlerRegistry,
        *,
        config: ConsumerConfig | None = None,
        on_outcome: Callable[[Event | None, Outcome], None] | None = None,
        tracing: Tracing = NO_TRACING,
        codecs: PayloadCodecs | None = None,
    ) -> None:
        self.ledger = ledger
        self.route = ledger.route
        self.registry = registry
        self.config = config or ConsumerConfig()
        self.codecs = codecs or PayloadCodecs()
        self.tracing = tracing
        self._on_outcome = on_outcome
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
        unacknowledged too (it is delivered again later). With a ledger that
        :attr:`~Ledger.redelivers`, the deliveries from the first failed attempt on are left
        unacknowledged and :class:`~outboxkit.inbox.RedeliveryRequested` is raised.
        """
        wait = self.config.receive_timeout if timeout is None else timeout
        deliveries = self._receive(subscription, wait)
        if not deliveries or (should_stop is not None and should_stop()):
            return 0
        redelivers = self.ledger.redelivers
        if self.config.prefetch and not redelivers and len(deliveries) >= self.config.batch_size:
            self._receive_ahead(subscription, wait)
        self.ledger.begin_batch()
        outcomes = self.handle_batch(deliveries, should_stop=should_stop)
        cut = len(outcomes)
        if redelivers:
            cut = next((i for i, o in enumerate(outcomes) if o is Outcome.RETRY), cut)
        handled = deliveries[:cut]
        if handled:
            self._acknowledge(subscription, handled)
        self.ledger.end_batch()
        if cut < len(outcomes):
            delay = self.ledger.redelivery_delay
            raise RedeliveryRequested(
                delay,
                f"{len(deliveries) - cut} deliveries of {self.route.topic} left for "
                f"redelivery in {delay:.1f} s after a failed attempt",
            )
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
        """Record the outcome of one delivery (does not acknowledge it)."""
        return self.handle_batch([delivery])[0]

    def handle_batch(
        self, deliveries: Sequence[Delivery], *, should_stop: Callable[[], bool] | None = None
    ) -> list[Outcome]:
        """Record the outcome of each delivery, in order; does not acknowledge them.

        Returns the outcomes of the deliveries handled, a prefix of ``deliveries`` (shorter
        only when ``should_stop`` turned true). Consecutive deliveries with transactional
        handlers go to :meth:`Ledger.consume` together; a side-effect handler is run on its
        own, between them, so every key's events run in the order received. Raises
        :class:`~outboxkit.errors.RepositoryError` when the database cannot record an
        outcome; nothing was acknowledged and the deliveries will come again.
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
            return self._report(None, self.ledger.undecodable(delivery, exc))
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
            return self._report(event, self.ledger.dead(event, reason))
        if spec.payload_type is not None:
            try:  # deterministic: a payload that does not fit never will, so no retries
                event = decode_payload(event, spec.payload_type, self.codecs)
            except DecodeError as exc:
                return self._report(event, self.ledger.dead(event, f"undecodable payload: {exc}"))
        return event, spec

    def _consume_segment(
        self, segment: Sequence[tuple[Event, HandlerSpec]], should_stop: Callable[[], bool] | None
    ) -> list[Outcome]:
        """Run a run of transactional handlers in one transaction; outcomes of those handled."""
        if not segment:
            return []
        runs = [(event, self._bind(spec, event)) for event, spec in segment]
        results = self.ledger.consume(runs, should_stop)
        outcomes: list[Outcome] = []
        for (event, _spec), result in zip(segment, results, strict=True):
            if result.outcome is Outcome.NOT_RUN:
                break
            outcomes.append(self._report(event, self.ledger.settle(event, result)))
        return outcomes

    def _run_side_effect(self, spec: HandlerSpec, event: Event) -> Outcome:
        """Run a non-transactional handler, then record the event consumed (at-least-once).

        Only the handler's own exception counts as a failed attempt; a database error
        while reading or recording the event propagates uncounted.
        """
        refused = self.ledger.before_side_effect(event)
        if refused is not None:
            return self.ledger.settle(event, ConsumeResult(refused))
        try:
            with handling(event), self.tracing.processing(self.route, event):
                spec.func(event)
        except Exception as exc:
            return self.ledger.settle(event, ConsumeResult(Outcome.FAILED, error=exc))
        done = Outcome.CONSUMED if self.ledger.mark_consumed(event) else Outcome.DUPLICATE
        return self.ledger.settle(event, ConsumeResult(done))

    def _bind(self, spec: HandlerSpec, event: Event) -> Run:
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
        if event is not None:
            self.ledger.finished(event, outcome)
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
