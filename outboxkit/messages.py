"""Values that cross the library's boundaries: what callers publish and what the table holds."""

from __future__ import annotations

import copy
import enum
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic

import attrs
from typing_extensions import TypeVar

#: Version written when a request does not say one (the Go ``DefaultEventVersion``).
DEFAULT_EVENT_VERSION = "v1"
#: Attempts in all, the first included, before a row goes ``dead`` (the Go default). The
#: name is the Go column's; ``max_retry=3`` means three attempts, not three retries.
DEFAULT_MAX_RETRY = 20
#: Width of the ``event_id`` columns (the outbox's and the inbox's): longer ids are refused
#: by the publisher and, read from the broker, by the envelope and receipt decoders.
MAX_EVENT_ID = 64
#: Largest row id: the ``BIGINT`` of the ``id`` and ``outbox_id`` columns (SQLite's
#: ``INTEGER`` too). A larger id read from the broker is refused before it reaches SQL.
MAX_ROW_ID = 2**63 - 1

#: The payload type of an :class:`Event`. Covariant (an event is read-only), and ``Any`` by
#: default so plain ``Event`` keeps meaning "an event with a JSON payload".
PayloadT_co = TypeVar("PayloadT_co", covariant=True, default=Any)


class Status(str, enum.Enum):
    """The four statuses of an outbox row, spelled as the Go system stores them.

    ``consumed`` and ``dead`` are final: no guarded transition leaves them except an explicit
    requeue of a dead row.
    """

    PENDING = "pending"
    PUBLISHED = "published"
    CONSUMED = "consumed"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


def _strip(value: str | None) -> str:
    return "" if value is None else str(value).strip()


def _strip_headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


class Outcome(str, enum.Enum):
    """What happened to one event at one step: one type from a store's answer to what a
    consumer records and its observers count.

    A consumer records one of ``CONSUMED``, ``RETRY``, ``DEAD``, ``DUPLICATE`` (the event was
    final already: nothing ran) or ``SKIPPED`` (not this consumer's event: acknowledged,
    nothing touched) for each delivery, and tells observers that. On the way, a store
    answers each item of a consume batch with ``CONSUMED``, ``DUPLICATE``, ``MISSING`` (no
    such row), ``MISMATCH`` (the row holds another event), ``FAILED`` (the handler raised; its
    writes rolled back, the row unchanged) or ``NOT_RUN`` (a stop was asked first), and a
    scheduled retry with ``RETRY``, ``DEAD`` (its attempts are used up) or ``SKIPPED`` (the
    row was final, missing or not in the expected state).
    """

    CONSUMED = "consumed"
    RETRY = "retry"
    DEAD = "dead"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    MISSING = "missing"
    MISMATCH = "mismatch"
    FAILED = "failed"
    NOT_RUN = "not_run"


@attrs.frozen(kw_only=True)
class PublishRequest:
    """One event to publish, with the fields of the Go ``PublishRequest``.

    Strings are trimmed (as the Go publisher does). ``aggregate_id`` defaults to the message
    key and ``event_id`` to a fresh UUID, so publishing the same request object twice is
    idempotent: the second publish writes nothing.

    ``correlation_id`` ties every event of one business flow together and ``causation_id``
    names the event whose handling caused this one. Left empty, they are filled when the
    event is written (see :mod:`outboxkit.publish.causality`): a publish made while a handler runs
    inherits the handled event's correlation id and takes its event id as causation id; any
    other publish starts a flow, with ``correlation_id = event_id`` and no causation id.
    """

    event_type: str = attrs.field(converter=_strip)
    payload: Any
    message_key: str = attrs.field(default="", converter=_strip)
    event_version: str = attrs.field(default=DEFAULT_EVENT_VERSION, converter=_strip)
    aggregate_id: str = attrs.field(default="", converter=_strip)
    event_id: str = attrs.field(factory=lambda: str(uuid.uuid4()), converter=_strip)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_strip_headers)
    correlation_id: str = attrs.field(default="", converter=_strip)
    causation_id: str = attrs.field(default="", converter=_strip)

    def __attrs_post_init__(self) -> None:
        if not self.event_version:
            object.__setattr__(self, "event_version", DEFAULT_EVENT_VERSION)
        if not self.aggregate_id:
            object.__setattr__(self, "aggregate_id", self.message_key)
        if not self.event_id:
            object.__setattr__(self, "event_id", str(uuid.uuid4()))


def with_fields(request: PublishRequest, **changes: Any) -> PublishRequest:
    """A copy of ``request`` with ``changes`` set as given, without running the converters
    again (``attrs.evolve`` does, at several microseconds a call on the publish path).

    Only for values already in their final form (ids taken from other requests or events,
    an encoded payload, a headers dict of strings).
    """
    copied = copy.copy(request)
    for name, value in changes.items():
        object.__setattr__(copied, name, value)
    return copied


@attrs.frozen(kw_only=True)
class OutboxMessage:
    """One row of an outbox table, as read back by a repository.

    ``event_id`` is ``None`` for rows written by the Go system, which has no such column; the
    envelope then falls back to the event shell's id or the row id (as Go does).
    ``lease_token`` is set while a relay holds the row claimed.
    """

    id: int
    event_id: str | None
    event_type: str
    service_name: str
    topic: str
    message_key: str
    payload: str
    status: Status
    #: Failed attempts counted so far.
    retry_count: int
    #: Attempts in all before the row goes ``dead``: it does when ``retry_count`` reaches it.
    max_retry: int
    next_retry_at: datetime | None
    last_error: str | None
    published_at: datetime | None
    consumed_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    lease_token: str | None = None


@attrs.frozen(kw_only=True)
class Event(Generic[PayloadT_co]):
    """What a handler receives: one decoded event and where it stands.

    ``Event[OrderPlaced]`` is an event whose payload was decoded into ``OrderPlaced``
    (the event type was registered with ``payload_type=OrderPlaced``); a plain ``Event``
    carries the payload as JSON values (dicts, lists, strings, numbers).

    ``attempt`` is 1 on the first delivery and grows with each retry, so a handler can tell
    a retry from a first try. ``message_key`` is the broker key the event travelled under.
    ``correlation_id`` is never empty (an event written without one, e.g. by the Go system,
    is its own flow: its event id); ``causation_id`` is empty for the first event of a flow.
    """

    event_id: str
    outbox_id: int
    event_type: str
    event_version: str
    service_name: str
    aggregate_id: str
    message_key: str
    payload: PayloadT_co
    headers: Mapping[str, str]
    attempt: int
    occurred_at: str | None = None
    published_at: str | None = None
    correlation_id: str = ""
    causation_id: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.event_id)
