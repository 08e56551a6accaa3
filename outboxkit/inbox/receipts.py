"""Receipts: how the producer of an inbox route learns that its events were handled.

An inbox consumer records what it handled in its own database and cannot mark the
producer's row. So, after committing and acknowledging a batch, it sends one small
**receipt** per finished event (``consumed`` or ``dead`` in its inbox) to the route's
receipt topic, ``<topic>.receipts``. The producer's engine consumes that topic (group
``<group>-receipts``) and marks its rows ``consumed`` or ``dead``, guarded by event identity
like every other mark, so a forged or stray receipt cannot touch another event's row.

Receipts are best effort, and need not be more: a receipt that is lost (the consumer died
before sending it, the broker lost it) leaves the row ``published``, the relay's
stale-published rescue publishes the event again, the inbox finds it a duplicate, and the
consumer sends the receipt again. The same rescue covers a broker that lost the event
itself. A producer row of an inbox route therefore ends ``consumed`` (or ``dead``) as on
any route, and nothing is lost when the broker fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import attrs

from outboxkit.broker import Broker, BrokerMessage, Subscription
from outboxkit.routing import Route, validate_group_name, validate_topic_name
from outboxkit.store import ConsumeStore

logger = logging.getLogger(__name__)

#: Receipt outcomes.
CONSUMED = "consumed"
DEAD = "dead"
#: Receipts received per step.
RECEIPT_BATCH = 500


def receipts_topic(route: Route) -> str:
    """The topic (stream) carrying ``route``'s receipts."""
    return validate_topic_name(f"{route.topic}.receipts")


def receipts_group(route: Route) -> str:
    """The consumer group in which the producers' engines read ``route``'s receipts."""
    return validate_group_name(f"{route.group}-receipts")


@attrs.frozen(kw_only=True)
class Receipt:
    """``event_id`` (row ``outbox_id`` of the producer's table) ended ``outcome``."""

    event_id: str
    outbox_id: int
    event_type: str
    outcome: str
    reason: str = ""

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, value: bytes) -> Receipt:
        """Raises ``ValueError`` (or ``TypeError``/``KeyError``) for anything malformed."""
        obj = json.loads(value)
        receipt = cls(
            event_id=str(obj["event_id"]),
            outbox_id=int(obj["outbox_id"]),
            event_type=str(obj["event_type"]),
            outcome=str(obj["outcome"]),
            reason=str(obj.get("reason", "")),
        )
        if receipt.outcome not in (CONSUMED, DEAD) or not receipt.event_id:
            raise ValueError(f"not a receipt: {obj!r}")
        return receipt


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
    """Marks the producer's rows from receipts. One instance per receipt thread."""

    def __init__(self, repository: ConsumeStore, route: Route) -> None:
        self.repository = repository
        self.route = route

    def run_once(self, subscription: Subscription, *, timeout: float) -> int:
        """Receive receipts, mark their rows, acknowledge them; return how many rows changed.

        A database error propagates before anything is acknowledged (the receipts come
        again); a malformed receipt is logged and acknowledged.
        """
        deliveries = subscription.receive(timeout=timeout, max_messages=RECEIPT_BATCH)
        changed = 0
        for delivery in deliveries:
            try:
                receipt = Receipt.decode(delivery.value)
            except (ValueError, TypeError, KeyError) as exc:
                logger.error(
                    "malformed receipt on %s (receipt %r), acknowledged: %s",
                    delivery.topic,
                    delivery.receipt,
                    exc,
                )
                continue
            if receipt.outcome == CONSUMED:
                marked = self.repository.mark_consumed(
                    self.route, receipt.outbox_id, event_id=receipt.event_id
                )
            else:
                marked = self.repository.mark_dead(
                    self.route,
                    receipt.outbox_id,
                    reason=receipt.reason or "dead in the consumer's inbox",
                    event_id=receipt.event_id,
                )
            changed += int(marked)
            logger.debug(
                "receipt: event %s (%s) %s in the inbox; row %s of %s %s",
                receipt.event_id,
                receipt.event_type,
                receipt.outcome,
                receipt.outbox_id,
                self.route.table,
                "marked" if marked else "already final, missing or another event",
            )
        if deliveries:
            subscription.ack_many(deliveries)
        return changed
