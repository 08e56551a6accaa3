"""Correlation and causation: which event is being handled, so what it publishes joins its flow.

A flow is a chain of events that one request started (an order placed, its invoice
requested, the invoice sent). Every event of a flow carries the same ``correlation_id``;
each event also names, as ``causation_id``, the event whose handler published it. Nobody
has to thread these ids through handler code by hand: while the consumer runs a handler it
records the event on the handler's connection (``connection.info``) and in a context
variable, and :func:`with_flow_ids` reads them back when that handler publishes.

* A publish on the handler's connection (the usual, transactional case) finds the event in
  ``connection.info``. The entry is removed when the handler returns, because ``info``
  belongs to the pooled DBAPI connection and would otherwise leak into the next checkout.
* A publish from a side-effect handler, or on another connection, while the handler runs
  in this thread (or in a context copied from it) finds it in the context variable.
* Anything else starts a flow: ``correlation_id = event_id``, no causation id.

Ids given in the :class:`~outboxkit.messages.PublishRequest` always win.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from sqlalchemy.engine import Connection

from outboxkit.messages import Event, PublishRequest, with_fields

#: Key of ``connection.info`` under which the event being handled is kept.
INFO_KEY = "outboxkit.handling"

_HANDLING: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "outboxkit_handling", default=None
)
_ABSENT = object()


@contextlib.contextmanager
def handling(event: Event, connection: Connection | None = None) -> Iterator[None]:
    """Mark ``event`` as the one being handled (on ``connection`` too, when given) for the
    duration of the block; nesting restores the outer event on exit."""
    token = _HANDLING.set(event)
    previous: object = _ABSENT
    if connection is not None:
        previous = connection.info.get(INFO_KEY, _ABSENT)
        connection.info[INFO_KEY] = event
    try:
        yield
    finally:
        if connection is not None:
            _restore(connection, previous)
        _HANDLING.reset(token)


def _restore(connection: Connection, previous: object) -> None:
    try:
        if previous is _ABSENT:
            connection.info.pop(INFO_KEY, None)
        else:
            connection.info[INFO_KEY] = previous
    except Exception:  # an invalidated connection is discarded with its info
        pass


def handled_event(connection: Connection | None = None) -> Event | None:
    """The event whose handler is running: ``connection``'s first, else this context's."""
    if connection is not None:
        try:
            found = connection.info.get(INFO_KEY)
        except Exception:  # a closed connection has no handler on it
            found = None
        if isinstance(found, Event):
            return found
    return _HANDLING.get()


def with_flow_ids(request: PublishRequest, cause: Event | None) -> PublishRequest:
    """``request`` with its correlation and causation ids filled (given ones are kept).

    With a ``cause`` (the event being handled) the request inherits its correlation id and
    takes its event id as causation id; without one it starts a flow of its own.
    """
    correlation = request.correlation_id or (cause.correlation_id if cause else "")
    causation = request.causation_id or (cause.event_id if cause else "")
    correlation = correlation or request.event_id
    if correlation == request.correlation_id and causation == request.causation_id:
        return request
    return with_fields(request, correlation_id=correlation, causation_id=causation)
