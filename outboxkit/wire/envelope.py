"""The two JSON formats of the outbox, both supersets of the Go system's.

* The **event shell** is what the ``payload`` column holds:
  ``{event_id, event_type, event_version, aggregate_id, payload}`` plus our optional
  ``headers``, ``occurred_at``, ``correlation_id`` and ``causation_id``. The Go relay
  ignores fields it does not know, so a row we write is one it can read; a row it wrote is
  one we can read.
* The **envelope** is the broker message value:
  ``{outbox_id, event_id, event_type, event_version, service_name, aggregate_id, payload}``
  plus ``envelope_version``, ``occurred_at``, ``published_at``, ``attempt``, ``headers``,
  ``correlation_id`` and ``causation_id`` (the last two omitted when empty, so rows and
  messages without them, the Go system's, still decode). A Go-emitted envelope (no
  ``envelope_version``) decodes as version 1.

Decoding failures raise :class:`~outboxkit.errors.DecodeError` carrying whatever ids could be
read, so an identifiable row can still be marked dead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import attrs

from outboxkit.errors import DecodeError, InvalidEventError
from outboxkit.messages import (
    DEFAULT_EVENT_VERSION,
    MAX_EVENT_ID,
    MAX_ROW_ID,
    OutboxMessage,
    PublishRequest,
)
from outboxkit.routing import MAX_EVENT_TYPE, MAX_SERVICE_NAME
from outboxkit.wire import fields

#: Version of the envelope this code writes. Readers accept this and every older version.
ENVELOPE_VERSION = 1
CONTENT_TYPE = "application/json"
#: Broker headers carrying routing facts, so a consumer can filter without decoding.
HEADER_EVENT_TYPE = "event_type"
HEADER_EVENT_ID = "event_id"
HEADER_CONTENT_TYPE = "content-type"
#: Broker headers carrying the flow an event belongs to (omitted when empty).
HEADER_CORRELATION_ID = "correlation_id"
HEADER_CAUSATION_ID = "causation_id"
#: W3C trace context headers copied from the request's headers onto the broker message.
TRACE_HEADERS = ("traceparent", "tracestate")


def utc_isoformat(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix; naive datetimes are taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


#: One encoder for the whole process: ``json.dumps`` with any non-default option builds a
#: new ``JSONEncoder`` per call, which cost more than encoding a small envelope.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact, deterministic JSON (UTF-8 kept as is, as Go's encoder does)."""
    return _ENCODER.encode(value)


# --------------------------------------------------------------------------- event shell


@attrs.frozen(kw_only=True)
class EventShell:
    """The decoded ``payload`` column of a row."""

    event_id: str
    event_type: str
    event_version: str
    aggregate_id: str
    payload: Any
    headers: Mapping[str, str] = attrs.field(factory=dict)
    occurred_at: str | None = None
    correlation_id: str = ""
    causation_id: str = ""


def _non_string_key(value: Any) -> Any:
    """The first dict key in ``value`` (nested) that is not a string, or ``None``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return key if key is not None else "None"
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def encode_shell(
    request: PublishRequest, *, occurred_at: datetime, keys_checked: bool = False
) -> str:
    """The ``payload`` column text for ``request``.

    Raises :class:`InvalidEventError` when the payload is not JSON-serialisable (including
    NaN and infinities, which JSON cannot carry) or has a dict key that is not a string
    (JSON would turn it into one), unless ``keys_checked`` says the caller's payload codec
    has already walked the payload and found only string keys.
    """
    shell: dict[str, Any] = {
        "event_id": request.event_id,
        "event_type": request.event_type,
        "event_version": request.event_version,
        "aggregate_id": request.aggregate_id,
        "payload": request.payload,
        "occurred_at": utc_isoformat(occurred_at),
    }
    if request.headers:
        shell["headers"] = dict(request.headers)
    _put_flow_ids(shell, request.correlation_id, request.causation_id)
    bad_key = None if keys_checked else _non_string_key(request.payload)
    if bad_key is not None:
        raise InvalidEventError(
            f"payload of event {request.event_id} ({request.event_type}) has the non-string "
            f"key {bad_key!r}: JSON would silently turn it into a string"
        )
    try:
        return dumps(shell)
    except (TypeError, ValueError, RecursionError) as exc:  # nested too deep for Python
        raise InvalidEventError(
            f"payload of event {request.event_id} ({request.event_type}) is not "
            f"JSON-serialisable: {exc}"
        ) from exc


def _put_flow_ids(obj: dict[str, Any], correlation_id: str, causation_id: str) -> None:
    """Add the flow ids to a shell or envelope, leaving empty ones out (Go has neither)."""
    if correlation_id:
        obj["correlation_id"] = correlation_id
    if causation_id:
        obj["causation_id"] = causation_id


def _text(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    return value.strip() if isinstance(value, str) else ""


def _headers(obj: Mapping[str, Any]) -> dict[str, str]:
    raw = obj.get("headers")
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def decode_shell(text: str, *, outbox_id: int | None = None) -> EventShell:
    """Parse a ``payload`` column with the Go rules (trim, empty version -> v1).

    Invalid JSON, an empty event type or a missing payload raise :class:`DecodeError`.
    """
    try:
        obj = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:  # nested too deep for Python
        raise DecodeError(
            f"failed to parse outbox event shell: {exc}", outbox_id=outbox_id
        ) from exc
    if not isinstance(obj, dict):
        raise DecodeError("failed to parse outbox event shell: not an object", outbox_id=outbox_id)
    event_type = _text(obj, "event_type")
    event_id = _text(obj, "event_id")
    if not event_type:
        raise DecodeError("event type is empty", outbox_id=outbox_id, event_id=event_id or None)
    if "payload" not in obj:
        raise DecodeError(
            "payload is empty",
            outbox_id=outbox_id,
            event_id=event_id or None,
            event_type=event_type,
        )
    occurred = obj.get("occurred_at")
    return EventShell(
        event_id=event_id,
        event_type=event_type,
        event_version=_text(obj, "event_version") or DEFAULT_EVENT_VERSION,
        aggregate_id=_text(obj, "aggregate_id"),
        payload=obj["payload"],
        headers=_headers(obj),
        occurred_at=occurred if isinstance(occurred, str) else None,
        correlation_id=_text(obj, "correlation_id"),
        causation_id=_text(obj, "causation_id"),
    )


# --------------------------------------------------------------------------- envelope


@attrs.frozen(kw_only=True)
class Envelope:
    """One event as it travels through the broker.

    ``attempt`` is 1 for the first delivery of the row and grows with each republish after a
    failure (``retry_count + 1`` at publish time).
    """

    outbox_id: int
    event_id: str
    event_type: str
    event_version: str = DEFAULT_EVENT_VERSION
    service_name: str = ""
    aggregate_id: str = ""
    payload: Any = None
    occurred_at: str | None = None
    published_at: str | None = None
    attempt: int = 1
    headers: Mapping[str, str] = attrs.field(factory=dict)
    envelope_version: int = ENVELOPE_VERSION
    correlation_id: str = ""
    causation_id: str = ""


def envelope_from_row(row: OutboxMessage, *, published_at: datetime | str) -> Envelope:
    """Build the envelope the relay publishes for ``row`` (``published_at`` a moment, or
    one already in the envelope's ISO form).

    The event id falls back to the shell's, then to the row id as a string (the Go rule), so
    rows written by the Go system publish exactly as Go would publish them.
    """
    shell = decode_shell(row.payload, outbox_id=row.id)
    return Envelope(
        outbox_id=row.id,
        event_id=row.event_id or shell.event_id or str(row.id),
        event_type=shell.event_type,
        event_version=shell.event_version,
        service_name=row.service_name,
        aggregate_id=shell.aggregate_id or row.message_key,
        payload=shell.payload,
        occurred_at=shell.occurred_at,
        published_at=(
            published_at if isinstance(published_at, str) else utc_isoformat(published_at)
        ),
        attempt=row.retry_count + 1,
        headers=shell.headers,
        correlation_id=shell.correlation_id,
        causation_id=shell.causation_id,
    )


def row_event_id(outbox_id: int, event_id: str | None, payload: str | None) -> str:
    """The event id a row stands for: its ``event_id`` column, else (a Go row) its shell's
    event id, else the row id as a string — the rule :func:`envelope_from_row` publishes by."""
    if event_id:
        return event_id
    if payload is not None:
        try:
            shell_id = decode_shell(payload, outbox_id=outbox_id).event_id
        except DecodeError:
            shell_id = ""
        if shell_id:
            return shell_id
    return str(outbox_id)


def encode_envelope(envelope: Envelope) -> bytes:
    """The broker message value: UTF-8 JSON with Go's field names (empty strings omitted)."""
    obj: dict[str, Any] = {
        "envelope_version": envelope.envelope_version,
        "outbox_id": envelope.outbox_id,
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "event_version": envelope.event_version,
        "service_name": envelope.service_name,
        "aggregate_id": envelope.aggregate_id,
        "payload": envelope.payload,
        "occurred_at": envelope.occurred_at,
        "published_at": envelope.published_at,
        "attempt": envelope.attempt,
        "headers": dict(envelope.headers),
    }
    # Go marks these `omitempty`; dropping empty ones keeps our output byte-compatible.
    for name in ("event_id", "event_version", "service_name", "aggregate_id"):
        if not obj[name]:
            del obj[name]
    for name in ("occurred_at", "published_at"):
        if obj[name] is None:
            del obj[name]
    if not obj["headers"]:
        del obj["headers"]
    _put_flow_ids(obj, envelope.correlation_id, envelope.causation_id)
    return dumps(obj).encode("utf-8")


#: The identity fields of an envelope, each with its check (see :mod:`outboxkit.wire.fields`):
#: the values that reach SQL (the row lock, the inbox's row, a ``dead`` mark) or a log line.
_ID_CHECKS: tuple[tuple[str, Callable[[object, str], Any]], ...] = (
    ("outbox_id", fields.row_id),
    ("event_id", functools.partial(fields.identifier, limit=MAX_EVENT_ID)),
    ("event_type", functools.partial(fields.identifier, limit=MAX_EVENT_TYPE)),
    ("service_name", functools.partial(fields.identifier, limit=MAX_SERVICE_NAME)),
)


def _read_ids(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The identity fields that pass their checks (``None`` for the others, and for those
    absent, null or empty), and what is wrong with the first that fails."""
    ids: dict[str, Any] = {}
    problem = None
    for name, check in _ID_CHECKS:
        raw = obj.get(name)
        ids[name] = None
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue  # absent: Go omits empty fields
        try:
            ids[name] = check(raw, name)
        except DecodeError as exc:
            problem = problem or exc.reason
    return ids, problem


def decode_envelope(value: bytes | str) -> Envelope:
    """Parse a broker message value written by outboxkit or by the Go relay.

    Every field that reaches SQL is checked first against the column it will meet
    (:mod:`outboxkit.wire.fields`): ``outbox_id`` an integer within ``BIGINT``,
    ``event_id``, ``event_type`` and ``service_name`` strings that fit their columns.
    Raises :class:`DecodeError` (with the ids that passed their checks, and a reason that
    describes the fault without quoting the message) when the value is not strict JSON,
    fails a check, has no ``outbox_id`` or ``event_type``, lacks a payload, or comes from a
    newer envelope version than this code understands.
    """
    obj = fields.parse_json(value, "message")
    if not isinstance(obj, dict):
        raise DecodeError(f"message is {fields.describe(obj)}, not a JSON object")
    ids, problem = _read_ids(obj)
    version = obj.get("envelope_version", 1)
    # bool is an int subclass in Python: JSON ``true`` must not pass as version 1.
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DecodeError(f"envelope_version is {fields.describe(version)}, not 1 or more", **ids)
    if version > ENVELOPE_VERSION:
        shown = version if version <= MAX_ROW_ID else "past 2**63"  # thousands of digits
        raise DecodeError(
            f"envelope_version {shown} is newer than this outboxkit understands "
            f"({ENVELOPE_VERSION})",
            **ids,
        )
    if problem is not None:
        raise DecodeError(problem, **ids)
    outbox_id = ids["outbox_id"]
    if outbox_id is None:
        raise DecodeError("message has no outbox_id", **ids)
    if not ids["event_type"]:
        raise DecodeError("message lacks event type", **ids)
    if "payload" not in obj:
        raise DecodeError("message lacks payload", **ids)
    attempt = obj.get("attempt", 1)
    occurred, published = obj.get("occurred_at"), obj.get("published_at")
    return Envelope(
        outbox_id=outbox_id,
        event_id=ids["event_id"] or str(outbox_id),
        event_type=ids["event_type"],
        event_version=_text(obj, "event_version") or DEFAULT_EVENT_VERSION,
        service_name=ids["service_name"] or "",
        aggregate_id=_text(obj, "aggregate_id"),
        payload=obj["payload"],
        occurred_at=occurred if isinstance(occurred, str) else None,
        published_at=published if isinstance(published, str) else None,
        attempt=(
            attempt
            if isinstance(attempt, int)
            and not isinstance(attempt, bool)
            and 0 < attempt <= MAX_ROW_ID
            else 1
        ),
        headers=_headers(obj),
        envelope_version=version,
        correlation_id=_text(obj, "correlation_id"),
        causation_id=_text(obj, "causation_id"),
    )


def broker_headers(envelope: Envelope) -> dict[str, str]:
    """Headers every broker message carries: type, id, content type, the flow ids (when
    set) and trace context, so a consumer or a tap can follow a flow without decoding."""
    return message_headers(
        envelope.event_type,
        envelope.event_id,
        envelope.correlation_id,
        envelope.causation_id,
        envelope.headers,
    )


def message_headers(
    event_type: str,
    event_id: str,
    correlation_id: str,
    causation_id: str,
    event_headers: Mapping[str, str],
) -> dict[str, str]:
    """:func:`broker_headers` from the envelope's fields, for a caller that has no
    :class:`Envelope` (the relay's splice)."""
    headers = {
        HEADER_EVENT_TYPE: event_type,
        HEADER_EVENT_ID: event_id,
        HEADER_CONTENT_TYPE: CONTENT_TYPE,
    }
    if correlation_id:
        headers[HEADER_CORRELATION_ID] = correlation_id
    if causation_id:
        headers[HEADER_CAUSATION_ID] = causation_id
    for name in TRACE_HEADERS:
        if name in event_headers:
            headers[name] = event_headers[name]
    return headers
