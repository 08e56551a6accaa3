"""What outboxkit puts in its log records, so log pipelines can rely on it.

Every line about one event names its event id, type, service and topic in the message
(for people) and as ``extra=`` fields on the record (for structured pipelines, e.g. a JSON
formatter that copies record attributes). The field names are fixed here and documented in
``docs/running.md``:

=====================  ====================================================
``outbox_event_id``    the event id (``PublishRequest.event_id``)
``outbox_event_type``  the event type (``biz_type`` column)
``outbox_service``     the service whose table and topic the event uses
``outbox_topic``       the topic (Kafka) or stream (Redis) of the service
``outbox_id``          the row's primary key in the service's outbox table
``outbox_ids``         several row ids (the republish sweep)
``outbox_outage``      which loop an outage line is about (``relay orders``)
=====================  ====================================================

The library configures no handlers; levels are fixed: DEBUG per event, INFO per lifecycle
step, WARNING per retried failure (with the handler's traceback), ERROR per dead event.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.exc import StatementError

EVENT_ID = "outbox_event_id"
EVENT_TYPE = "outbox_event_type"
SERVICE = "outbox_service"
TOPIC = "outbox_topic"
OUTBOX_ID = "outbox_id"


def event_fields(
    *,
    event_id: str | None,
    event_type: str,
    service: str,
    topic: str,
    outbox_id: int | None = None,
) -> dict[str, Any]:
    """The ``extra=`` fields of a log record about one event."""
    return {
        EVENT_ID: event_id,
        EVENT_TYPE: event_type,
        SERVICE: service,
        TOPIC: topic,
        OUTBOX_ID: outbox_id,
    }


#: ``scheme://user:password@`` -> the part before the password, and the password.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (any scheme: SQL,
    Redis, Kafka; also URLs SQLAlchemy cannot parse, and URLs inside a message).

    ``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``. Text without a URL
    carrying credentials comes back unchanged.
    """
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


def hide_parameters(exc: BaseException) -> BaseException:
    """Make ``exc`` (and the SQLAlchemy errors it chains) render without bound parameters.

    SQLAlchemy appends ``[parameters: ...]`` to a statement error's text; for an insert
    into the outbox that is the whole payload, personal data included, which would then
    reach every log and error report the exception passes through. An engine created with
    ``hide_parameters=True`` leaves them out; the caller's engine may not be, so every error
    the repository raises is scrubbed here first. Returns ``exc``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StatementError):
            current.hide_parameters = True
        current = current.__cause__ or current.__context__
    return exc
