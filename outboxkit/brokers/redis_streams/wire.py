"""How a message is laid out in a stream entry, and read back.

Stream entries carry the fields ``key``, ``value`` and ``h:<name>`` per header; values are
raw bytes, so the client must not decode responses.
"""

from __future__ import annotations

from collections.abc import Mapping

from outboxkit.broker import BrokerMessage, Delivery
from outboxkit.errors import PermanentRejectionError

FIELD_KEY = b"key"
FIELD_VALUE = b"value"
HEADER_PREFIX = b"h:"


def text(value: bytes | str) -> str:
    """``value`` as text; Redis hands back bytes (the client does not decode)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def encode_fields(message: BrokerMessage) -> list[bytes | str]:
    """The field/value pairs of ``message``'s entry, flattened as ``XADD`` takes them.

    Raises :class:`~outboxkit.errors.PermanentRejectionError` for a field of the wrong
    type (redis-py would raise ``DataError`` for the whole batch, or send ``str(value)``):
    the same message would fail the same way every time.
    """
    _check_type("key", message.key, str)
    _check_type("value", message.value, (bytes, bytearray))
    fields: list[bytes | str] = [FIELD_KEY, message.key, FIELD_VALUE, message.value]
    for name, value in message.headers.items():
        _check_type("header name", name, str)
        _check_type(f"header {name!r}", value, str)
        fields.extend((HEADER_PREFIX + name.encode(), value))
    return fields


def _check_type(what: str, value: object, expected: type | tuple[type, ...]) -> None:
    if not isinstance(value, expected):
        raise PermanentRejectionError(
            f"message {what} is a {type(value).__name__}, which Redis cannot carry as is"
        )


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
