"""Outcomes recorded in an inbox on the consumer's own database, for a service whose events
are produced in another database (which the consumer may not even be able to reach):

* handler returned -> ``consumed`` in the inbox, in the same transaction as the handler's
  writes (transactional handlers), so a redelivered event is a no-op;
* handler raised :class:`~outboxkit.errors.PermanentError`, no handler for the type ->
  ``dead`` in the inbox, logged at ERROR, acknowledged;
* handler raised anything else -> one failed attempt counted in the inbox; the delivery and
  those after it are left unacknowledged and the consume loop raises
  :class:`~outboxkit.inbox.RedeliveryRequested`, so the engine subscribes again after the
  retry policy's delay and the broker delivers them again; ``dead`` after
  :attr:`Inbox.max_attempts` attempts.

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

from outboxkit.broker import Delivery
from outboxkit.consume.ledger import Ledger, Run
from outboxkit.errors import DecodeError
from outboxkit.inbox.base import Inbox, InboxItem, InboxStatus
from outboxkit.inbox.receipts import CONSUMED, DEAD, Receipt, ReceiptSender
from outboxkit.messages import Event, Outcome
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route
from outboxkit.store import ConsumeResult

logger = logging.getLogger(__name__)

#: Outcomes after which an event is final in the inbox (a receipt tells the producer).
_FINAL = (Outcome.CONSUMED, Outcome.DEAD, Outcome.DUPLICATE)


class InboxLedger(Ledger):
    """Records outcomes of ``route``'s events in ``inbox`` under the route's group; sends
    receipts through ``receipts`` (``None``: the producer is not told)."""

    redelivers = True

    def __init__(
        self,
        inbox: Inbox,
        route: Route,
        retry_policy: RetryPolicy | None = None,
        *,
        receipts: ReceiptSender | None = None,
    ) -> None:
        super().__init__(route, retry_policy)
        self.inbox = inbox
        self.receipts = receipts
        self._finished: list[Receipt] = []

    def _item(self, event: Event, run: Run | None = None) -> InboxItem:
        item = InboxItem(
            event_id=event.event_id,
            event_type=event.event_type,
            service=self.route.service,
            outbox_id=event.outbox_id,
        )
        return item if run is None else attrs.evolve(item, run=run)

    def consume(
        self, runs: Sequence[tuple[Event, Run]], should_stop: Callable[[], bool] | None
    ) -> list[ConsumeResult[Any]]:
        items = [self._item(event, run) for event, run in runs]
        return self.inbox.consume_batch(self.route.group, items, should_stop=should_stop)

    def settle(self, event: Event, result: ConsumeResult[Any]) -> Outcome:
        outcome = super().settle(event, result)
        if outcome is Outcome.CONSUMED:
            logger.debug(
                "event %s (%s) consumed into inbox %s",
                event.event_id,
                event.event_type,
                self.inbox.table_name,
            )
        elif result.outcome is Outcome.DUPLICATE:
            logger.debug("event %s (%s) is a duplicate", event.event_id, event.event_type)
        return outcome

    def before_side_effect(self, event: Event) -> Outcome | None:
        record = self.inbox.get(self.route.group, event.event_id)
        if record is not None and record.status in (InboxStatus.CONSUMED, InboxStatus.DEAD):
            return Outcome.DUPLICATE
        return None

    def mark_consumed(self, event: Event) -> bool:
        return self.inbox.mark_consumed(self.route.group, self._item(event))

    def retry(self, event: Event, error: BaseException) -> Outcome:
        reason = f"consume handling failed: {type(error).__name__}: {error}"
        record = self.inbox.record_failure(self.route.group, self._item(event), reason=reason)
        if record.status is InboxStatus.DEAD:
            logger.error(
                "event %s (%s) dead in inbox %s after %d attempts: %s",
                event.event_id,
                event.event_type,
                self.inbox.table_name,
                record.attempts,
                reason,
                exc_info=error,
            )
            return Outcome.DEAD
        if record.status is InboxStatus.CONSUMED:
            return Outcome.DUPLICATE
        delay = self.retry_policy.delay(record.attempts)
        self.redelivery_delay = max(self.redelivery_delay, delay)
        logger.warning(
            "event %s (%s) attempt %d of %d failed, redelivery in %.1f s: %s",
            event.event_id,
            event.event_type,
            record.attempts,
            self.inbox.max_attempts,
            delay,
            reason,
            exc_info=error,
        )
        return Outcome.RETRY

    def dead(self, event: Event, reason: str, *, exc: BaseException | None = None) -> Outcome:
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

    def undecodable(self, delivery: Delivery, exc: DecodeError) -> Outcome:
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

    # ------------------------------------------------------------------ receipts

    def begin_batch(self) -> None:
        self.redelivery_delay = 0.0
        self._finished = []

    def finished(self, event: Event, outcome: Outcome) -> None:
        """Keep a receipt for each event final in the inbox."""
        if self.receipts is None or outcome not in _FINAL:
            return
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

    def end_batch(self) -> None:
        if self.receipts is not None:
            self.receipts.send(self._finished)
        self._finished = []
