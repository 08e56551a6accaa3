"""The values the storage roles take and give: rows to add, claims, results, filters.

They cross stages (the publisher builds :class:`NewMessage`, the relay holds a
:class:`Claim`, the consumer reads :class:`ConsumeResult`), so they live apart from the roles
(:mod:`outboxkit.store.roles`) that use them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs
from sqlalchemy.engine import Connection

from outboxkit.messages import DEFAULT_MAX_RETRY, OutboxMessage, Outcome, Status

T = TypeVar("T")

#: ``last_error`` keeps at most this many *characters* (never a split character).
MAX_LAST_ERROR = 2000

#: The stale-published rescue waits ``older_than * 2**n`` for a row with ``retry_count`` n,
#: doubling at most this many times (x32), so a slow consumer is not flooded with re-sends
#: and an event the broker lost after earlier failures is still rescued within hours.
RESCUE_DOUBLINGS = 5


def rescue_wait(older_than: float, retry_count: int) -> float:
    """Seconds a row with ``retry_count`` stays ``published`` before the rescue re-sends it."""
    return older_than * float(1 << min(max(retry_count, 0), RESCUE_DOUBLINGS))


@attrs.frozen(kw_only=True)
class NewMessage:
    """A row to insert: the publisher has validated and encoded everything already."""

    event_id: str
    event_type: str
    message_key: str
    payload: str
    max_retry: int = DEFAULT_MAX_RETRY


@attrs.frozen(kw_only=True)
class AddResult:
    """Outcome of adding one message: ``created`` is False for an already-known event id.

    ``existing_payload`` is the stored ``payload`` column of an already-known row, when the
    repository read it anyway (the SQL repository does, in the statement that finds the
    row's id), so the publisher can report a re-publish with a different payload for free.
    """

    outbox_id: int
    event_id: str
    created: bool
    existing_payload: str | None = None


@attrs.frozen(kw_only=True)
class Claim:
    """Rows a relay claimed, fenced by ``token`` until their lease runs out."""

    token: str
    messages: list[OutboxMessage]


@attrs.frozen
class ConsumeResult(Generic[T]):
    """A store's answer for one item of a consume batch (see :class:`~outboxkit.messages.Outcome`),
    with the handler's return value or, for ``FAILED``, its exception."""

    outcome: Outcome
    value: T | None = None
    error: BaseException | None = None


@attrs.frozen(kw_only=True)
class ConsumeItem:
    """One event of a batch for :meth:`Repository.consume_batch`.

    ``event_id`` and ``event_type`` are what the message claims; the row is acted on only
    when they match it (for a Go row without an ``event_id`` column value, the event id of
    its JSON shell, else its row id). ``None`` skips that check (trusted internal callers).
    """

    outbox_id: int
    event_id: str | None
    event_type: str | None
    run: Callable[[Connection], Any]


def _tuple_of_str(value: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


def _tuple_of_int(value: Iterable[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


@attrs.frozen(kw_only=True)
class RowFilter:
    """Which rows of one table an operator means: always one status, then any of the rest.

    Used by :meth:`Repository.find_rows`, :meth:`Repository.count_rows` and the admin API
    (dead-letter listing, requeue, purge, retention). Every field left at its default
    matches everything. Times are naive UTC by the repository's clock
    (:meth:`Repository.now`) and compare with ``updated_at``: the moment a row last changed,
    which for a ``dead`` row is when it died and for a ``consumed`` row when it was consumed.
    """

    status: Status = attrs.field(converter=Status)
    #: Only these row ids (``None``: any id).
    ids: tuple[int, ...] | None = attrs.field(default=None, converter=_tuple_of_int)
    #: Only these event types (empty: any type).
    event_types: tuple[str, ...] = attrs.field(factory=tuple, converter=_tuple_of_str)
    #: Only this exact message key.
    message_key: str | None = None
    #: Only rows whose ``last_error`` contains this text (case-sensitive, taken literally).
    error_contains: str | None = None
    #: Only rows changed at or after this moment.
    changed_after: datetime | None = None
    #: Only rows changed before this moment.
    changed_before: datetime | None = None


@attrs.frozen(kw_only=True)
class HousekeepingLock:
    """Whether this process holds the housekeeping lock (see
    :meth:`Repository.housekeeping_lock`); falsy when another process holds it."""

    acquired: bool

    def __bool__(self) -> bool:
        return self.acquired


#: What no database's text column stores: NUL (PostgreSQL refuses it) and lone UTF-16
#: surrogates (JSON's ``"\ud800"`` decodes to one, and no driver encodes it as UTF-8).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> bool:
    """Whether every supported database can store ``text`` in a text column."""
    return UNSTORABLE.search(text) is None


def truncate_error(reason: str, limit: int = MAX_LAST_ERROR) -> str:
    """``reason`` as ``last_error`` stores it: cut to ``limit`` characters (Python strings
    never split a code point), and what no database stores (:data:`UNSTORABLE`) replaced by
    U+FFFD.

    A reason often quotes what an event carried (a handler's exception, a codec's
    complaint); unreplaced, a NUL in it made the write itself fail, and the failure came
    back with every delivery of the event.
    """
    if len(reason) > limit:
        reason = reason[: limit - 1] + "\u2026"
    return UNSTORABLE.sub("\ufffd", reason)
