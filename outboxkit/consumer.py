"""The consumer: run the registered handler for each delivery of one service's topic.

Every delivery ends in exactly one recorded outcome before it is acknowledged:

* handler returned -> ``consumed`` (transactional handlers: in the same transaction as the
  handler's own writes, so the effect happens once however often the event is delivered);
* handler raised :class:`~outboxkit.errors.PermanentError` -> ``dead`` with the reason;
* handler raised anything else -> the row goes back to ``pending`` with a backoff and the
  relay publishes it again (retries flow through the database, as in the Go design, so a
  poison message never blocks the partition);
* row already ``consumed``/``dead`` -> duplicate, nothing runs;
* undecodable message or unknown event type -> ``dead`` when the row can be identified,
  else logged; either way acknowledged, so one bad message never stops the consumer.

If the outcome cannot be recorded (the database is down), the delivery is **not**
acknowledged and :class:`~outboxkit.errors.RepositoryError` propagates: the engine then
drops the subscription and subscribes again after a pause, so the broker delivers the
message again rather than a later acknowledgement silently covering it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

import attrs
from sqlalchemy.engine import Connection

from outboxkit.broker import Delivery, Subscription
from outboxkit.codec import Envelope, decode_envelope
from outboxkit.errors import DecodeError, PermanentError
from outboxkit.messages import Event
from outboxkit.registry import HandlerRegistry, HandlerSpec
from outboxkit.repository import ConsumeOutcome, Repository, RetryOutcome
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route

logger = logging.getLogger(__name__)


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


class Outcome(str, enum.Enum):
    """What happened to one delivery."""

    CONSUMED = "consumed"
    RETRY = "retry"
    DEAD = "dead"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"


class Consumer:
    """Handles deliveries of one service. One instance per consumer thread."""

    def __init__(
        self,
        repository: Repository,
        route: Route,
        registry: HandlerRegistry,
        *,
        config: ConsumerConfig | None = None,
        retry_policy: RetryPolicy | None = None,
        on_outcome: Callable[[Event | None, Outcome], None] | None = None,
    ) -> None:
        self.repository = repository
        self.route = route
        self.registry = registry
        self.config = config or ConsumerConfig()
        self.retry_policy = retry_policy or RetryPolicy()
        self._on_outcome = on_outcome

    def run_once(
        self,
        subscription: Subscription,
        *,
        timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Receive one batch, handle and acknowledge each delivery; return how many handled.

        Stops at the first delivery whose outcome could not be recorded and raises, leaving
        it and the rest of the batch unacknowledged. When ``should_stop`` turns true, the
        rest of the batch is left unacknowledged too (it is delivered again later).
        """
        deliveries = subscription.receive(
            timeout=self.config.receive_timeout if timeout is None else timeout,
            max_messages=self.config.batch_size,
        )
        handled = 0
        for delivery in deliveries:
            if should_stop is not None and should_stop():
                break
            self.handle(delivery)
            subscription.ack(delivery)
            handled += 1
        return handled

    def handle(self, delivery: Delivery) -> Outcome:
        """Record the outcome of one delivery in the database (does not acknowledge it)."""
        try:
            envelope = decode_envelope(delivery.value)
        except DecodeError as exc:
            return self._report(None, self._undecodable(delivery, exc))
        event = _event(envelope, delivery)
        if envelope.service_name and envelope.service_name != self.route.service:
            logger.warning(
                "skipping event %s (%s) of service %r on %s: this consumer serves %r",
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
        return self._report(event, self._run(spec, event))

    # ----------------------------------------------------------------- internals

    def _run(self, spec: HandlerSpec, event: Event) -> Outcome:
        try:
            if spec.transactional:
                result = self.repository.consume(
                    self.route, event.outbox_id, _bind(spec.func, event)
                )
                outcome = result.outcome
            else:
                outcome = self._run_side_effect(spec, event)
        except PermanentError as exc:
            return self._dead(event, f"permanent failure: {exc}")
        except Exception as exc:
            # Also a RepositoryError from consume(): if the database is down, recording
            # the retry fails too and propagates, leaving the delivery unacknowledged.
            return self._retry(event, exc)
        if outcome is ConsumeOutcome.CONSUMED:
            logger.debug("event %s (%s) consumed", event.event_id, event.event_type)
            return Outcome.CONSUMED
        if outcome is ConsumeOutcome.MISSING:
            logger.warning(
                "event %s (%s): outbox row %s not found in %s; acknowledged without handling",
                event.event_id,
                event.event_type,
                event.outbox_id,
                self.route.table,
            )
            return Outcome.SKIPPED
        logger.debug("event %s (%s) is a duplicate", event.event_id, event.event_type)
        return Outcome.DUPLICATE

    def _run_side_effect(self, spec: HandlerSpec, event: Event) -> ConsumeOutcome:
        row = self.repository.get(self.route, event.outbox_id)
        if row is None:
            return ConsumeOutcome.MISSING
        if row.status.value in ("consumed", "dead"):
            return ConsumeOutcome.DUPLICATE
        spec.func(event)
        if self.repository.mark_consumed(self.route, event.outbox_id):
            return ConsumeOutcome.CONSUMED
        return ConsumeOutcome.DUPLICATE

    def _retry(self, event: Event, exc: BaseException) -> Outcome:
        reason = f"consume handling failed: {type(exc).__name__}: {exc}"
        outcome = self.repository.schedule_retry(
            self.route, event.outbox_id, reason=reason, backoff=self.retry_policy.delay
        )
        if outcome is RetryOutcome.DEAD:
            logger.error(
                "event %s (%s) dead after %d attempts: %s",
                event.event_id,
                event.event_type,
                event.attempt,
                reason,
            )
            return Outcome.DEAD
        if outcome is RetryOutcome.SCHEDULED:
            logger.warning(
                "event %s (%s) attempt %d failed, retry scheduled: %s",
                event.event_id,
                event.event_type,
                event.attempt,
                reason,
            )
            logger.debug("traceback of event %s's failure", event.event_id, exc_info=exc)
            return Outcome.RETRY
        return Outcome.DUPLICATE

    def _dead(self, event: Event, reason: str) -> Outcome:
        if self.repository.mark_dead(self.route, event.outbox_id, reason=reason):
            logger.error("event %s (%s) marked dead: %s", event.event_id, event.event_type, reason)
            return Outcome.DEAD
        return Outcome.DUPLICATE

    def _undecodable(self, delivery: Delivery, exc: DecodeError) -> Outcome:
        same_service = exc.service_name in (None, self.route.service)
        if exc.outbox_id is not None and same_service:
            reason = f"undecodable message: {exc.reason}"
            if self.repository.mark_dead(self.route, exc.outbox_id, reason=reason):
                logger.error(
                    "outbox row %s of %s marked dead: %s", exc.outbox_id, self.route.table, reason
                )
                return Outcome.DEAD
        logger.error(
            "undecodable message on %s (receipt %r, event id %s), acknowledged: %s",
            delivery.topic,
            delivery.receipt,
            exc.event_id,
            exc.reason,
        )
        return Outcome.SKIPPED

    def _report(self, event: Event | None, outcome: Outcome) -> Outcome:
        if self._on_outcome is not None:
            try:
                self._on_outcome(event, outcome)
            except Exception:
                logger.exception("on_outcome callback failed")
        return outcome


def _bind(func: Callable[..., Any], event: Event) -> Callable[[Connection], Any]:
    def run(connection: Connection) -> Any:
        return func(event, connection)

    return run


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
    )
