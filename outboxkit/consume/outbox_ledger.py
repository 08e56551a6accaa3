"""Outcomes recorded on the producer's outbox row, in the database the consumer shares with it.

* handler returned -> ``consumed`` (transactional handlers: in the same transaction as the
  handler's own writes, so the effect happens once however often the event is delivered);
* handler raised :class:`~outboxkit.errors.PermanentError` -> ``dead`` with the reason;
* handler raised anything else -> the row goes back to ``pending`` with a backoff and the
  relay publishes it again (retries flow through the database, as in the Go design, so a
  poison message never blocks the partition); the delivery is acknowledged;
* row already ``consumed``/``dead`` -> duplicate, nothing runs;
* the message names a row that holds another event (event id or type differ: a forged or
  stray message, a topic that outlived its table) -> logged with both ids, the row untouched;
  no mark (``consumed``, ``dead``) ever lands on a row whose event id or type is not the
  message's;
* the message names a row this database does not have -> logged; a streak of them says the
  consumer reads another database than its producers write;
* undecodable message -> ``dead`` when it names its own row and event id, else logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from outboxkit.broker import Delivery
from outboxkit.consume.ledger import Ledger, Run
from outboxkit.errors import DecodeError
from outboxkit.messages import Event, Outcome
from outboxkit.observability.logs import event_fields, hide_parameters
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.store import ConsumeItem, ConsumeResult, ConsumeStore
from outboxkit.wire.envelope import row_event_id

logger = logging.getLogger(__name__)

#: Consecutive deliveries whose row is missing after which the consumer says, at ERROR,
#: that it is probably reading another database than its producers write.
MISSING_STREAK_ALARM = 10


class OutboxLedger(Ledger):
    """Records outcomes on ``store``'s rows of ``route``'s table."""

    def __init__(
        self, store: ConsumeStore, route: Route, retry_policy: RetryPolicy | None = None
    ) -> None:
        super().__init__(route, retry_policy)
        self.store = store
        #: Deliveries acknowledged without handling because their row was not found, in
        #: all and in a row (a streak means a misplaced consumer, see :meth:`missing`).
        self.missing_rows = 0
        self._missing_streak = 0

    def consume(
        self, runs: Sequence[tuple[Event, Run]], should_stop: Callable[[], bool] | None
    ) -> list[ConsumeResult[Any]]:
        items = [
            ConsumeItem(
                outbox_id=event.outbox_id,
                event_id=event.event_id,
                event_type=event.event_type,
                run=run,
            )
            for event, run in runs
        ]
        return self.store.consume_batch(self.route, items, should_stop=should_stop)

    def settle(self, event: Event, result: ConsumeResult[Any]) -> Outcome:
        if result.outcome is not Outcome.MISSING:
            self._missing_streak = 0
        outcome = super().settle(event, result)
        if outcome is Outcome.CONSUMED:
            self._log(logging.DEBUG, event, "consumed")
        elif result.outcome is Outcome.DUPLICATE:
            self._log(logging.DEBUG, event, "a duplicate, acknowledged")
        return outcome

    def before_side_effect(self, event: Event) -> Outcome | None:
        row = self.store.get(self.route, event.outbox_id)
        if row is None:
            return Outcome.MISSING
        same = row.event_type == event.event_type and (
            row_event_id(row.id, row.event_id, row.payload) == event.event_id
        )
        if not same:
            return Outcome.MISMATCH
        if row.status.value in ("consumed", "dead"):
            return Outcome.DUPLICATE
        return None

    def mark_consumed(self, event: Event) -> bool:
        return self.store.mark_consumed(
            self.route, event.outbox_id, event_id=event.event_id, event_type=event.event_type
        )

    def mismatch(self, event: Event) -> Outcome:
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

    def missing(self, event: Event) -> Outcome:
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

    def retry(self, event: Event, error: BaseException) -> Outcome:
        hide_parameters(error)  # a handler's SQL error must not put its parameters in logs
        reason = f"consume handling failed: {type(error).__name__}: {error}"
        outcome = self.store.schedule_retry(
            self.route, event.outbox_id, reason=reason, backoff=self.retry_policy.delay
        )
        if outcome is Outcome.DEAD:
            self._log(logging.ERROR, event, f"dead after {event.attempt} attempts: {reason}", error)
            return Outcome.DEAD
        if outcome is Outcome.RETRY:
            what = f"attempt {event.attempt} failed, retry scheduled: {reason}"
            self._log(logging.WARNING, event, what, error)
            return Outcome.RETRY
        return Outcome.DUPLICATE

    def dead(self, event: Event, reason: str, *, exc: BaseException | None = None) -> Outcome:
        marked = self.store.mark_dead(
            self.route,
            event.outbox_id,
            reason=reason,
            event_id=event.event_id,
            event_type=event.event_type,
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

    def undecodable(self, delivery: Delivery, exc: DecodeError) -> Outcome:
        same_service = exc.service_name in (None, self.route.service)
        if exc.outbox_id is not None and exc.event_id and same_service:
            # Only a message that names the row's own event id (and type, when it names one)
            # may condemn it.
            reason = f"undecodable message: {exc.reason}"
            marked = self.store.mark_dead(
                self.route,
                exc.outbox_id,
                reason=reason,
                event_id=exc.event_id,
                event_type=exc.event_type,
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
