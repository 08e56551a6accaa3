"""The consumer of a service whose events are handled through an inbox on another database.

It is a :class:`~outboxkit.consume.consumer.Consumer` whose outcomes are recorded in the consumer's
own database instead of the producer's outbox row (which it may not even be able to reach):

* handler returned -> ``consumed`` in the inbox, in the same transaction as the handler's
  writes (transactional handlers), so a redelivered event is a no-op;
* handler raised :class:`~outboxkit.errors.PermanentError`, no handler for the type ->
  ``dead`` in the inbox, logged at ERROR, acknowledged;
* handler raised anything else -> one failed attempt counted in the inbox; the delivery and
  those after it are left unacknowledged and :class:`RedeliveryRequested` tells the consumer
  loop to subscribe again after the retry policy's delay, so the broker delivers them
  again; ``dead`` after :attr:`Inbox.max_attempts` attempts.

After each batch it sends a receipt for every event now final in its inbox
(:mod:`outboxkit.inbox.receipts`), from which the producer's engine marks its row
``consumed`` or ``dead``. Retries hold up the events behind the failed one in
its partition/stream until it succeeds or goes ``dead``; keep ``max_attempts`` and the
retry policy short for such services. The rest of the failed delivery's batch is still
handled (it comes again as duplicates), so a retried event can land after newer events of
its key, as with the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from outboxkit.broker import Delivery, Subscription
from outboxkit.consume.consumer import Consumer, ConsumerConfig
from outboxkit.consume.registry import HandlerRegistry, HandlerSpec
from outboxkit.errors import DecodeError, PermanentError
from outboxkit.inbox.base import Inbox, InboxItem, InboxStatus, RedeliveryRequested
from outboxkit.inbox.receipts import CONSUMED, DEAD, Receipt, ReceiptSender
from outboxkit.messages import Event, Outcome
from outboxkit.observability.tracing import NO_TRACING, Tracing
from outboxkit.publish.causality import handling
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.store import ConsumeResult, Repository
from outboxkit.wire.payloads import PayloadCodecs

logger = logging.getLogger(__name__)


class InboxConsumer(Consumer):
    """Handles deliveries of one service through ``inbox``. One instance per consumer thread.

    ``repository`` is the engine's (this process's own outbox); it is never asked about the
    delivered events, whose rows live in the producer's database.
    """

    def __init__(
        self,
        repository: Repository,
        route: Route,
        registry: HandlerRegistry,
        inbox: Inbox,
        *,
        config: ConsumerConfig | None = None,
        retry_policy: RetryPolicy | None = None,
        on_outcome: Callable[[Event | None, Outcome], None] | None = None,
        tracing: Tracing = NO_TRACING,
        codecs: PayloadCodecs | None = None,
        receipts: ReceiptSender | None = None,
    ) -> None:
        super().__init__(
            repository,
            route,
            registry,
            config=config,
            retry_policy=retry_policy,
            on_outcome=on_outcome,
            tracing=tracing,
            codecs=codecs,
        )
        self.inbox = inbox
        self.receipts = receipts
        self._redeliver_after: float | None = None
        self._finished: list[Receipt] = []

    def run_once(
        self,
        subscription: Subscription,
        *,
        timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Receive a batch, handle it, acknowledge everything before the first retry.

        Raises :class:`RedeliveryRequested` when an attempt failed: the failed delivery and
        those after it are not acknowledged (the caller subscribes again after ``delay``).
        """
        deliveries = subscription.receive(
            timeout=self.config.receive_timeout if timeout is None else timeout,
            max_messages=self.config.batch_size,
        )
        if not deliveries or (should_stop is not None and should_stop()):
            return 0
        self._redeliver_after = None
        self._finished = []
        outcomes = self.handle_batch(deliveries, should_stop=should_stop)
        cut = next((i for i, o in enumerate(outcomes) if o is Outcome.RETRY), len(outcomes))
        handled = deliveries[:cut]
        if handled:
            subscription.ack_many(handled)
        if self.receipts is not None:
            self.receipts.send(self._finished)
        if cut < len(outcomes):
            delay = self._redeliver_after or 0.0
            raise RedeliveryRequested(
                delay,
                f"{len(deliveries) - cut} deliveries of {self.route.topic} left for "
                f"redelivery in {delay:.1f} s after a failed attempt",
            )
        return len(handled)

    # ----------------------------------------------------------------- internals

    def _report(self, event: Event | None, outcome: Outcome) -> Outcome:
        """Count the outcome, and keep a receipt for each event final in the inbox."""
        finished = (Outcome.CONSUMED, Outcome.DEAD, Outcome.DUPLICATE)
        if self.receipts is not None and event is not None and outcome in finished:
            status = {Outcome.CONSUMED: CONSUMED, Outcome.DEAD: DEAD}.get(outcome)
            reason = ""
            if status != CONSUMED:
                # Dead, or a duplicate of an event consumed or dead earlier: ask the inbox.
                record = self.inbox.get(self.route.group, event.event_id)
                if record is not None and record.status is not InboxStatus.FAILED:
                    status, reason = record.status.value, record.last_error or ""
            if status is not None:
                self._finished.append(
                    Receipt(
                        event_id=event.event_id,
                        outbox_id=event.outbox_id,
                        event_type=event.event_type,
                        outcome=status,
                        reason=reason,
                    )
                )
        return super()._report(event, outcome)

    def _item(self, event: Event, run: Callable[..., Any] | None = None) -> InboxItem:
        item = InboxItem(
            event_id=event.event_id,
            event_type=event.event_type,
            service=self.route.service,
            outbox_id=event.outbox_id,
        )
        return item if run is None else attrs.evolve(item, run=run)

    def _consume_segment(
        self, segment: Sequence[tuple[Event, HandlerSpec]], should_stop: Callable[[], bool] | None
    ) -> list[Outcome]:
        if not segment:
            return []
        items = [self._item(event, self._bind(spec, event)) for event, spec in segment]
        results = self.inbox.consume_batch(self.route.group, items, should_stop=should_stop)
        outcomes: list[Outcome] = []
        for (event, _spec), result in zip(segment, results, strict=True):
            if result.outcome is Outcome.NOT_RUN:
                break
            outcomes.append(self._report(event, self._settle(event, result)))
        return outcomes

    def _settle(self, event: Event, result: ConsumeResult[Any]) -> Outcome:
        if result.outcome is Outcome.CONSUMED:
            logger.debug(
                "event %s (%s) consumed into inbox %s",
                event.event_id,
                event.event_type,
                self.inbox.table_name,
            )
            return Outcome.CONSUMED
        if result.outcome is Outcome.FAILED:
            error = result.error
            assert error is not None
            if isinstance(error, PermanentError):
                return self._dead(event, f"permanent failure: {error}", exc=error)
            return self._retry(event, error)
        logger.debug("event %s (%s) is a duplicate", event.event_id, event.event_type)
        return Outcome.DUPLICATE

    def _run_side_effect(self, spec: HandlerSpec, event: Event) -> Outcome:
        """Run a non-transactional handler, then record it consumed (at-least-once)."""
        record = self.inbox.get(self.route.group, event.event_id)
        if record is not None and record.status in (InboxStatus.CONSUMED, InboxStatus.DEAD):
            return self._settle(event, ConsumeResult(Outcome.DUPLICATE))
        try:
            with handling(event), self.tracing.processing(self.route, event):
                spec.func(event)
        except Exception as exc:
            return self._settle(event, ConsumeResult(Outcome.FAILED, error=exc))
        if self.inbox.mark_consumed(self.route.group, self._item(event)):
            return self._settle(event, ConsumeResult(Outcome.CONSUMED))
        return self._settle(event, ConsumeResult(Outcome.DUPLICATE))

    def _retry(self, event: Event, exc: BaseException) -> Outcome:
        reason = f"consume handling failed: {type(exc).__name__}: {exc}"
        record = self.inbox.record_failure(self.route.group, self._item(event), reason=reason)
        if record.status is InboxStatus.DEAD:
            logger.error(
                "event %s (%s) dead in inbox %s after %d attempts: %s",
                event.event_id,
                event.event_type,
                self.inbox.table_name,
                record.attempts,
                reason,
                exc_info=exc,
            )
            return Outcome.DEAD
        if record.status is InboxStatus.CONSUMED:
            return Outcome.DUPLICATE
        delay = self.retry_policy.delay(record.attempts)
        self._redeliver_after = max(self._redeliver_after or 0.0, delay)
        logger.warning(
            "event %s (%s) attempt %d of %d failed, redelivery in %.1f s: %s",
            event.event_id,
            event.event_type,
            record.attempts,
            self.inbox.max_attempts,
            delay,
            reason,
            exc_info=exc,
        )
        return Outcome.RETRY

    def _dead(self, event: Event, reason: str, *, exc: BaseException | None = None) -> Outcome:
        if self.inbox.mark_dead(self.route.group, self._item(event), reason=reason):
            logger.error(
                "event %s (%s) marked dead in inbox %s: %s",
                event.event_id,
                event.event_type,
                self.inbox.table_name,
                reason,
                exc_info=exc,
            )
            return Outcome.DEAD
        logger.warning(
            "event %s (%s) not marked dead (%s): already final in inbox %s",
            event.event_id,
            event.event_type,
            reason,
            self.inbox.table_name,
        )
        return Outcome.DUPLICATE

    def _undecodable(self, delivery: Delivery, exc: DecodeError) -> Outcome:
        # Nothing is recorded: ids read from a message that cannot be decoded are not
        # trusted, and recording one dead would turn the real event into a duplicate.
        logger.error(
            "undecodable message on %s (receipt %r, outbox id %s, event id %s), acknowledged "
            "without handling; nothing recorded in inbox %s: %s",
            delivery.topic,
            delivery.receipt,
            exc.outbox_id,
            exc.event_id,
            self.inbox.table_name,
            exc.reason,
        )
        return Outcome.SKIPPED
