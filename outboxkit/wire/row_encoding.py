"""The relay's hot path: one claimed row -> one broker message, splicing the stored shell.

The general path (:func:`~outboxkit.wire.envelope.envelope_from_row` then
:func:`~outboxkit.wire.envelope.encode_envelope`) parses the whole ``payload`` column, builds
two attrs objects, and serialises the business payload a second time. For a shell this
library wrote, that work is redundant: the payload is already compact, deterministic JSON,
written by the same encoder with the same settings. :func:`encode_row` therefore copies the
payload's bytes from the stored shell into the envelope and serialises only the small fields
around it, so its cost per row no longer grows with the payload's structure (the measured
gain is in ``docs/performance.md``).

The splice is taken only for a shell whose head is exactly what
:func:`~outboxkit.wire.envelope.encode_shell` writes (no escapes or padding in its strings), whose
payload text has no escapes, and which carries ``occurred_at`` (our shells always have it,
the Go system's never do). For every shell ``encode_shell`` writes, the output is
byte-for-byte what the general path produces; a property test holds the two paths to that.
Every other shell (written by the Go system, by an older or newer writer) takes the general
path. A hand-made shell imitating our head exactly may have its payload copied as written
(spacing, number spelling, a repeated key kept): text that decodes to the same values, as
the last of repeated keys wins in Python and Go alike. Values the general path refuses are
never copied: invalid JSON, ``NaN``, infinities (``1e400``), text that cannot be UTF-8, and
nesting too deep for Python's parser (the general path then marks the row dead).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from outboxkit.broker import BrokerMessage
from outboxkit.errors import DecodeError
from outboxkit.messages import DEFAULT_EVENT_VERSION, OutboxMessage
from outboxkit.wire.envelope import (
    ENVELOPE_VERSION,
    broker_headers,
    dumps,
    encode_envelope,
    envelope_from_row,
    message_headers,
)

#: JSON string literal for any text (C-accelerated; non-ASCII kept, as ``dumps`` does).
_string = json.encoder.encode_basestring

#: The head of a shell :func:`~outboxkit.wire.envelope.encode_shell` wrote, up to the
#: payload's first byte. Its strings hold no backslash, quote or control character: they
#: need no escapes, so their JSON text is their value.
_OWN_SHELL_HEAD = re.compile(
    r'\{"event_id":"([^"\\\x00-\x1f]*)","event_type":"([^"\\\x00-\x1f]*)",'
    r'"event_version":"([^"\\\x00-\x1f]*)","aggregate_id":"([^"\\\x00-\x1f]*)","payload":'
)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e400": Go cannot decode it, our encoder refuses it
        raise ValueError(f"{text} is out of range")
    if value == 0.0 and any(digit in text.lower().partition("e")[0] for digit in "123456789"):
        raise ValueError(f"{text} underflows")  # the general path would write 0.0
    return value


#: Payloads with more objects and arrays than this (counting brackets, strings included)
#: take the general path: only they can be nested deep enough for Python's parser to give
#: up (about 990 levels), and whether it does depends on the stack it starts from, so the
#: splice must not accept one the general path, starting deeper, refuses.
_MAX_SPLICED_CONTAINERS = 900

#: Finds where the payload value ends, parsing it: a corrupt payload is never spliced, and
#: neither is one holding a value our encoder refuses (``NaN``, infinities) or one it would
#: write as another value (a float below the smallest double becomes 0.0).
_scan_value = json.JSONDecoder(  # type: ignore[attr-defined]
    parse_constant=_refuse_constant, parse_float=_finite_float
).scan_once


def encode_row(row: OutboxMessage, *, published_at: str) -> BrokerMessage:
    """The broker message for ``row`` (``published_at`` already in the envelope's ISO form).

    Raises :class:`~outboxkit.errors.DecodeError` when the shell cannot be parsed or the
    envelope cannot be serialised; the relay marks such a row dead.
    """
    spliced = _splice(row, published_at)
    if spliced is not None:
        return spliced
    envelope = envelope_from_row(row, published_at=published_at)
    try:
        value = encode_envelope(envelope)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DecodeError(
            f"failed to serialize outbox envelope: {exc}",
            outbox_id=row.id,
            event_id=envelope.event_id,
            event_type=envelope.event_type,
        ) from exc
    return BrokerMessage(
        topic=row.topic, key=row.message_key, value=value, headers=broker_headers(envelope)
    )


def _splice(row: OutboxMessage, published_at: str) -> BrokerMessage | None:
    """The message built by splicing, or ``None`` when the shell is not one we can splice.

    Strings matched by the head pattern are valid JSON string contents needing no escapes,
    so they are copied as they stand; strings from the row's columns are escaped.
    """
    text = row.payload
    head = _OWN_SHELL_HEAD.match(text)
    if head is None:
        return None
    shell_event_id, event_type, event_version, aggregate_id = head.groups()
    if not event_type or not _unpadded(event_type, event_version, aggregate_id, shell_event_id):
        return None
    start = head.end()
    if text.count("{", start) + text.count("[", start) > _MAX_SPLICED_CONTAINERS:
        return None  # possibly nested deeper than Python parses: the general path decides
    try:
        _, end = _scan_value(text, start)
    except (StopIteration, ValueError, RecursionError):
        return None  # the general path parses it again and says why it cannot
    payload_text = text[start:end]
    if "\\" in payload_text:
        return None
    tail = _read_tail(text, end)
    if tail is None:
        return None
    occurred_at, headers, correlation_id, causation_id = tail
    event_id = row.event_id or shell_event_id or str(row.id)
    aggregate = aggregate_id or row.message_key
    parts = [
        f'{{"envelope_version":{ENVELOPE_VERSION},"outbox_id":{row.id},'
        f'"event_id":{_string(event_id)},"event_type":"{event_type}",'
        f'"event_version":"{event_version or DEFAULT_EVENT_VERSION}",'
    ]
    if row.service_name:
        parts.append(f'"service_name":{_string(row.service_name)},')
    if aggregate:
        parts.append(f'"aggregate_id":{_string(aggregate)},')
    parts.append(
        f'"payload":{payload_text},"occurred_at":{_string(occurred_at)},'
        f'"published_at":{_string(published_at)},"attempt":{row.retry_count + 1}'
    )
    if headers:
        parts.append(f',"headers":{dumps(headers)}')
    if correlation_id:
        parts.append(f',"correlation_id":{_string(correlation_id)}')
    if causation_id:
        parts.append(f',"causation_id":{_string(causation_id)}')
    parts.append("}")
    try:
        value = "".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        return None  # a lone surrogate escaped in the tail: the general path refuses it
    return BrokerMessage(
        topic=row.topic,
        key=row.message_key,
        value=value,
        headers=message_headers(event_type, event_id, correlation_id, causation_id, headers),
    )


def _unpadded(*texts: str) -> bool:
    """Whether no text has surrounding whitespace (the general path would trim it)."""
    return all(text == text.strip() for text in texts)


#: The usual tail: only ``occurred_at`` (no headers, no flow ids).
_BARE_TAIL = re.compile(r',"occurred_at":"([^"\\\x00-\x1f]*)"}')


def _read_tail(text: str, end: int) -> tuple[str, dict[str, str], str, str] | None:
    """``(occurred_at, headers, correlation_id, causation_id)`` after the payload, or
    ``None`` when the tail is not one :func:`~outboxkit.wire.envelope.encode_shell` writes."""
    bare = _BARE_TAIL.fullmatch(text, end)
    if bare is not None:
        return bare.group(1), {}, "", ""
    if not text.startswith(",", end):
        return None
    try:
        tail = json.loads("{" + text[end + 1 :])
    except (ValueError, RecursionError):
        return None
    occurred_at = tail.get("occurred_at")
    if not isinstance(occurred_at, str) or not _TAIL_KEYS.issuperset(tail):
        return None
    headers = tail.get("headers", {})
    if not isinstance(headers, dict) or ("headers" in tail and not headers):
        return None
    if not all(isinstance(value, str) for value in headers.values()):
        return None
    flow_ids = []
    for name in ("correlation_id", "causation_id"):
        value = tail.get(name, "")
        if not isinstance(value, str) or (name in tail and not value) or not _unpadded(value):
            return None
        flow_ids.append(value)
    return occurred_at, headers, flow_ids[0], flow_ids[1]


#: The tail keys :func:`~outboxkit.wire.envelope.encode_shell` writes after the payload.
_TAIL_KEYS = frozenset({"occurred_at", "headers", "correlation_id", "causation_id"})
