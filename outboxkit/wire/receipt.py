"""The receipt: what an inbox consumer tells the producer of an event it finished.

A receipt is one small JSON object on the route's receipt topic
(``{event_id, outbox_id, event_type, outcome, reason}``), written by
:class:`~outboxkit.inbox.receipts.ReceiptSender` and applied to the producer's row by
:class:`~outboxkit.inbox.receipts.ReceiptApplier`. Anything on that topic may come from
any writer of the broker, so :meth:`Receipt.decode` is strict: every field is checked
against the column it will meet (:mod:`outboxkit.wire.fields`) before the applier runs
any SQL, and a value no genuine sender writes (a receipt over :data:`MAX_RECEIPT_BYTES`, a
reason over the inbox's ``last_error`` limit, an unknown outcome) is refused.
"""

from __future__ import annotations

import json

import attrs

from outboxkit.errors import DecodeError
from outboxkit.messages import MAX_EVENT_ID
from outboxkit.routing import MAX_EVENT_TYPE
from outboxkit.store import MAX_LAST_ERROR
from outboxkit.wire import fields

#: Receipt outcomes.
CONSUMED = "consumed"
DEAD = "dead"
#: The largest receipt read: a genuine one is two ids, a type and a reason of at most
#: ``MAX_LAST_ERROR`` characters, under 32 KiB even with every character JSON-escaped.
#: Anything larger is refused unparsed.
MAX_RECEIPT_BYTES = 64 * 1024


@attrs.frozen(kw_only=True)
class Receipt:
    """``event_id`` (row ``outbox_id`` of the producer's table, of type ``event_type``)
    ended ``outcome`` in the consumer's inbox, ``reason`` saying why when ``dead``."""

    event_id: str
    outbox_id: int
    event_type: str
    outcome: str
    reason: str = ""

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, value: bytes) -> Receipt:
        """The receipt ``value`` holds; :class:`~outboxkit.errors.DecodeError` with a short
        reason that never quotes the value when it is no valid receipt."""
        if len(value) > MAX_RECEIPT_BYTES:
            raise DecodeError(f"receipt is {len(value)} bytes, over {MAX_RECEIPT_BYTES}")
        obj = fields.parse_json(value, "receipt")
        if not isinstance(obj, dict):
            raise DecodeError(f"receipt is {fields.describe(obj)}, not a JSON object")
        outcome = obj.get("outcome")
        if outcome not in (CONSUMED, DEAD):
            raise DecodeError(
                f"receipt outcome is {fields.describe(outcome)}, not {CONSUMED!r} or {DEAD!r}"
            )
        return cls(
            event_id=fields.identifier(obj.get("event_id"), "event_id", MAX_EVENT_ID),
            outbox_id=fields.row_id(obj.get("outbox_id"), "outbox_id"),
            event_type=fields.identifier(obj.get("event_type"), "event_type", MAX_EVENT_TYPE),
            outcome=str(outcome),
            reason=fields.text(obj.get("reason"), "reason", MAX_LAST_ERROR),
        )
