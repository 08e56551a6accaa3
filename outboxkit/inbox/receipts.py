"""Receipts: how the producer of an inbox route learns that its events were handled.

An inbox consumer records what it handled in its own database and cannot mark the
producer's row. So, after committing and acknowledging a batch, it sends one small
**receipt** per finished event (``consumed`` or ``dead`` in its inbox) to the route's
receipt topic, ``<topic>.receipts``. The producer's engine consumes that topic (group
``<group>-receipts``) and marks its rows ``consumed`` or ``dead``.

**What a receipt may do.** Anyone who can write to the broker can write a receipt, so one
is applied only to a row it can speak of: a ``published`` row (one a relay has sent) whose
row id, event id *and* event type are the receipt's. A malformed receipt (see
:meth:`~outboxkit.wire.receipt.Receipt.decode`) is logged in one short line and
acknowledged; a receipt for another event's row, or for a row no relay has sent, changes
nothing. A receipt can race the relay's own ``published`` mark (the consumer can answer
before the relay's mark commits): one naming a row that a relay is sending right now
(``pending`` under a lease) is held for up to :data:`RECEIPT_HOLD_SECONDS` and applied once
the row is ``published``. The reason a ``dead`` receipt stores is the consumer's report,
marked as such and cleaned (:func:`reported_reason`); docs/security.md says what a writer
of the broker can still do.

Receipts are best effort, and need not be more: a receipt that is lost (the consumer died
before sending it, the broker lost it) leaves the row ``published``, the relay's
stale-published rescue publishes the event again, the inbox finds it a duplicate, and the
consumer sends the receipt again. The same rescue covers a broker that lost the event
itself. A producer row of an inbox route therefore ends ``consumed`` (or ``dead``) as on
any route, and nothing is lost when the broker fails.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence

from outboxkit.broker import Broker, BrokerMessage, Subscription
from outboxkit.errors import DecodeError
from outboxkit.messages import OutboxMessage, Status
from outboxkit.routing import Route, validate_group_name, validate_topic_name
from outboxkit.store import ConsumeStore
from outboxkit.wire.envelope import row_event_id
from outboxkit.wire.receipt import CONSUMED, DEAD, Receipt

__all__ = [
    "CONSUMED",
    "DEAD",
    "RECEIPT_BATCH",
    "RECEIPT_HOLD_SECONDS",
    "Receipt",
    "ReceiptApplier",
    "ReceiptSender",
    "receipts_group",
    "receipts_topic",
    "reported_reason",
]

logger = logging.getLogger(__name__)

#: Receipts received per step.
RECEIPT_BATCH = 500
#: How long a receipt naming a row that a relay is sending (``pending`` under a lease) is
#: held, waiting for the relay's ``published`` mark; then it is dropped (the
#: stale-published rescue asks the consumer again).
RECEIPT_HOLD_SECONDS = 30.0
#: Least time between two attempts at the held receipts.
RECEIPT_HOLD_RETRY = 0.2
#: Receipts held at most; past it the oldest is dropped.
MAX_HELD_RECEIPTS = RECEIPT_BATCH
#: Characters of the consumer's reason a ``dead`` receipt leaves in ``last_error``.
REPORTED_REASON_LIMIT = 500
#: What a reported reason may not carry: C0 and C1 control characters (terminal escapes,
#: bells, new lines) and the bidirectional overrides that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def receipts_topic(route: Route) -> str:
    """The topic (stream) carrying ``route``'s receipts."""
    return validate_topic_name(f"{route.topic}.receipts")


def receipts_group(route: Route) -> str:
    """The consumer group in which the producers' engines read ``route``'s receipts."""
    return validate_group_name(f"{route.group}-receipts")


def reported_reason(reason: str) -> str:
    """The ``last_error`` a ``dead`` receipt leaves on the producer's row.

    The producer cannot check what a receipt says, so the text says whose word it is, keeps
    at most :data:`REPORTED_REASON_LIMIT` characters of it, and carries no control
    character (a terminal showing ``outboxkit dlq list`` must not obey an escape a writer of
    the broker put there).
    """
    text = " ".join(_CONTROL.sub(" ", reason).split())
    if len(text) > REPORTED_REASON_LIMIT:
        text = text[: REPORTED_REASON_LIMIT - 1] + "\u2026"
    return f"dead in the consumer's inbox (reported by the consumer): {text or 'no reason given'}"


class ReceiptSender:
    """Sends an inbox consumer's receipts; failures are logged, never raised (see module)."""

    def __init__(self, broker: Broker, route: Route) -> None:
        self.broker = broker
        self.route = route
        self.topic = receipts_topic(route)

    def send(self, receipts: Sequence[Receipt]) -> int:
        """Publish ``receipts`` in one batch; return how many the broker accepted."""
        if not receipts:
            return 0
        messages = [
            BrokerMessage(topic=self.topic, key=r.event_id, value=r.encode()) for r in receipts
        ]
        try:
            results = self.broker.publish(messages)
        except Exception as exc:
            logger.warning(
                "%d receipts of %s not sent (the producer's rescue will ask again): %s",
                len(receipts),
                self.route.service,
                exc,
            )
            return 0
        sent = sum(1 for r in results if r.ok)
        if sent < len(receipts):
            logger.warning(
                "%d of %d receipts of %s not sent (the producer's rescue will ask again)",
                len(receipts) - sent,
                len(receipts),
                self.route.service,
            )
        return sent


class ReceiptApplier:
    """Marks the producer's rows from receipts. One instance per receipt thread.

    ``clock`` (monotonic seconds) times the receipts held for rows a relay is sending.
    """

    def __init__(
        self,
        repository: ConsumeStore,
        route: Route,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repository = repository
        self.route = route
        self._clock = clock
        #: ``(row id, event id)`` -> the receipt and when it is given up.
        self._held: dict[tuple[int, str], tuple[Receipt, float]] = {}
        self._next_retry = 0.0

    @property
    def held(self) -> int:
        """Receipts held for rows a relay is still sending."""
        return len(self._held)

    def run_once(self, subscription: Subscription, *, timeout: float) -> int:
        """Receive receipts, mark their rows, acknowledge them; return how many rows changed.

        A database error propagates before anything is acknowledged (the receipts come
        again); a malformed receipt is logged and acknowledged. Receipts held from earlier
        steps are tried again after the receive.
        """
        waiting = list(self._held)
        deliveries = subscription.receive(timeout=timeout, max_messages=RECEIPT_BATCH)
        changed = 0
        for delivery in deliveries:
            try:
                receipt = Receipt.decode(delivery.value)
            except DecodeError as exc:
                logger.error(
                    "malformed receipt on %s (receipt %r), acknowledged: %s",
                    delivery.topic,
                    delivery.receipt,
                    exc.reason,
                )
                continue
            changed += self._apply(receipt)
        if deliveries:
            subscription.ack_many(deliveries)
        return changed + self._retry_held(waiting)

    def _apply(self, receipt: Receipt) -> int:
        """Mark ``receipt``'s row; 1 if it changed. If not, say why (and hold the receipt
        when its row is being sent)."""
        if self._mark(receipt):
            self._log_marked(receipt)
            return 1
        row = self.repository.get(self.route, receipt.outbox_id)
        if row is not None and _in_flight(row, receipt):
            self._hold(receipt)
        else:
            self._log_refused(receipt, row)
        return 0

    def _mark(self, receipt: Receipt) -> bool:
        """The guarded mark: a ``published`` row that is the receipt's event."""
        if receipt.outcome == CONSUMED:
            return self.repository.mark_consumed(
                self.route,
                receipt.outbox_id,
                event_id=receipt.event_id,
                event_type=receipt.event_type,
                published_only=True,
            )
        return self.repository.mark_dead(
            self.route,
            receipt.outbox_id,
            reason=reported_reason(receipt.reason),
            event_id=receipt.event_id,
            event_type=receipt.event_type,
            published_only=True,
        )

    def _hold(self, receipt: Receipt) -> None:
        key = (receipt.outbox_id, receipt.event_id)
        if key not in self._held and len(self._held) >= MAX_HELD_RECEIPTS:
            old_id, old_event = next(iter(self._held))  # the oldest held
            del self._held[(old_id, old_event)]
            logger.info(
                "receipt for event %s (row %s of %s) dropped: %d receipts are held already",
                old_event,
                old_id,
                self.route.table,
                MAX_HELD_RECEIPTS,
            )
        until = self._held[key][1] if key in self._held else self._clock() + RECEIPT_HOLD_SECONDS
        self._held[key] = (receipt, until)
        logger.debug(
            "receipt for event %s (%s): row %s of %s is being sent; held until it is published",
            receipt.event_id,
            receipt.event_type,
            receipt.outbox_id,
            self.route.table,
        )

    def _retry_held(self, keys: Sequence[tuple[int, str]]) -> int:
        """Try the receipts held before this step again (at most every
        :data:`RECEIPT_HOLD_RETRY` seconds); drop those whose time is up."""
        now = self._clock()
        if not keys or now < self._next_retry:
            return 0
        self._next_retry = now + RECEIPT_HOLD_RETRY
        changed = 0
        for key in keys:
            held = self._held.pop(key, None)
            if held is None:
                continue
            receipt, until = held
            if self._mark(receipt):
                self._log_marked(receipt)
                changed += 1
                continue
            row = self.repository.get(self.route, receipt.outbox_id)
            if row is not None and _in_flight(row, receipt) and now < until:
                self._held[key] = held
            elif row is not None and _in_flight(row, receipt):
                logger.info(
                    "receipt for event %s (%s) dropped after %.0f s: row %s of %s is still "
                    "not published (the stale-published rescue asks the consumer again)",
                    receipt.event_id,
                    receipt.event_type,
                    RECEIPT_HOLD_SECONDS,
                    receipt.outbox_id,
                    self.route.table,
                )
            else:
                self._log_refused(receipt, row)
        return changed

    def _log_marked(self, receipt: Receipt) -> None:
        logger.debug(
            "receipt: event %s (%s) %s in the inbox; row %s of %s marked",
            receipt.event_id,
            receipt.event_type,
            receipt.outcome,
            receipt.outbox_id,
            self.route.table,
        )

    def _log_refused(self, receipt: Receipt, row: OutboxMessage | None) -> None:
        """Why a receipt changed nothing: a warning when it cannot be genuine."""
        if row is not None and not _names(row, receipt):
            logger.warning(
                "receipt for event %s (%s) names row %s of %s, which holds another event; "
                "acknowledged, the row untouched (a forged or stray receipt)",
                receipt.event_id,
                receipt.event_type,
                receipt.outbox_id,
                self.route.table,
            )
        elif row is not None and row.status is Status.PENDING:
            logger.info(
                "receipt for event %s (%s): row %s of %s is pending, not sent; acknowledged, "
                "the row untouched (a receipt applies only to a sent event: a late answer "
                "to an earlier copy, which the consumer repeats, or a forged receipt)",
                receipt.event_id,
                receipt.event_type,
                receipt.outbox_id,
                self.route.table,
            )
        else:
            logger.debug(
                "receipt: event %s (%s) %s in the inbox; row %s of %s %s",
                receipt.event_id,
                receipt.event_type,
                receipt.outcome,
                receipt.outbox_id,
                self.route.table,
                "missing" if row is None else f"already {row.status.value}",
            )


def _names(row: OutboxMessage, receipt: Receipt) -> bool:
    """Whether ``row`` is the event ``receipt`` speaks of (event id and type)."""
    return row.event_type == receipt.event_type and (
        row_event_id(row.id, row.event_id, row.payload) == receipt.event_id
    )


def _in_flight(row: OutboxMessage, receipt: Receipt) -> bool:
    """Whether ``row`` is ``receipt``'s event and a relay is sending it (``pending`` under a
    lease): its ``published`` mark is on its way."""
    return row.status is Status.PENDING and row.lease_token is not None and _names(row, receipt)
