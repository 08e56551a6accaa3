"""How a message is laid out in a stream entry, and read back.

Stream entries carry the fields ``key``, ``value`` and ``h:<name>`` per header; values are
raw bytes, so the client must not decode responses.
"""

from __future__ import annotations

from collections.abc import Mapping

from outboxkit.broker import BrokerMessage, Delivery

FIELD_KEY = b"key"
FIELD_VALUE = b"value"
HEADER_PREFIX = b"h:"


def text(value: bytes | str) -> str:
    """``value`` as text; Redis hands back bytes (the client does not decode)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def encode_fields(message: BrokerMessage) -> list[bytes | str]:
    """The field/value pairs of ``message``'s entry, flattened as ``XADD`` takes them."""
    fields: list[bytes | str] = [FIELD_KEY, message.key, FIELD_VALUE, message.value]
    for name, value in message.headers.items():
        fields.extend((HEADER_PREFIX + name.encode(), value))
    return fields


def decode_entry(
    topic: str, entry_id: bytes, fields: Mapping[bytes, bytes], first: bool
) -> Delivery:
    """The delivery of one entry; ``first`` when read with ``>`` (never delivered before)."""
    headers = {
        text(name[len(HEADER_PREFIX) :]): text(value)
        for name, value in fields.items()
        if name.startswith(HEADER_PREFIX)
    }
    return Delivery(
        topic=topic,
        key=text(fields.get(FIELD_KEY, b"")),
        value=bytes(fields.get(FIELD_VALUE, b"")),
        headers=headers,
        receipt=entry_id,
        delivery_count=1 if first else 2,
    )
