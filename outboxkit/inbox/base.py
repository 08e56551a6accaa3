"""The Inbox contract: "this consumer group has handled this event", on the consumer's database.

An outbox row lives in the producer's database. A consumer whose handlers write to another
database cannot mark that row ``consumed`` in its own transaction, so it keeps an **inbox**
there instead: one row per consumer group and event id, written in the same transaction as
the handler's writes. A redelivered event finds its row and runs nothing: exactly once in
effect across databases.

The docstrings are the specification; ``outboxkit.testing.inbox_contract.InboxContract``
checks every implementation against them on a real database.

Rules that hold for every method: each runs in its own short transaction and commits before
returning; an inbox is shared by all threads (it holds a pool, never a connection); driver
errors are raised as :class:`~outboxkit.errors.RepositoryError` with the cause chained, after
a deadlock, a serialization failure or a dead connection was retried a few times.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import attrs
from sqlalchemy.engine import Connection

from outboxkit.store import ConsumeResult

#: Failed attempts after which an inbox event goes ``dead`` (and is acknowledged).
DEFAULT_MAX_ATTEMPTS = 8


class InboxStatus(str, enum.Enum):
    """Where one event stands for one consumer group. ``consumed`` and ``dead`` are final."""

    CONSUMED = "consumed"
    #: At least one attempt failed; the broker delivers the event again.
    FAILED = "failed"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class InboxItem:
    """One received event to handle through the inbox.

    ``service``, ``event_type`` and ``outbox_id`` are stored with the row for operators (the
    producer's row id means nothing in the consumer's database).
    """

    event_id: str
    event_type: str
    service: str
    outbox_id: int | None = None
    run: Callable[[Connection], Any] = attrs.field(default=lambda _conn: None)


@attrs.frozen(kw_only=True)
class InboxRecord:
    """One inbox row, as read back."""

    consumer_group: str
    event_id: str
    event_type: str
    service_name: str
    outbox_id: int | None
    status: InboxStatus
    attempts: int
    last_error: str | None
    received_at: datetime
    updated_at: datetime
    consumed_at: datetime | None


class Inbox(abc.ABC):
    """Records which events each consumer group has handled, on the consumer's database."""

    @property
    @abc.abstractmethod
    def max_attempts(self) -> int:
        """Failed attempts after which :meth:`record_failure` makes an event ``dead``."""

    @property
    @abc.abstractmethod
    def table_name(self) -> str:
        """The inbox table's name (for messages and operators)."""

    # ------------------------------------------------------------------ schema

    @abc.abstractmethod
    def create_schema(self) -> None:
        """Create the inbox table and its index unless they exist. Idempotent.

        Runs on a connection of its own (DDL commits implicitly on MySQL).
        """

    @abc.abstractmethod
    def schema_ddl(self) -> str:
        """The SQL that :meth:`create_schema` would run, for Alembic or plain migrations."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`~outboxkit.errors.ConfigurationError` naming the table and the
        database when the inbox table does not exist (checked when an engine starts, so a
        consumer pointed at the wrong database fails at once rather than event by event)."""

    # ------------------------------------------------------------------ consuming

    @abc.abstractmethod
    def consume_batch(
        self,
        group: str,
        items: Sequence[InboxItem],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ConsumeResult[Any]]:
        """Run each item's ``run`` and record it ``consumed`` for ``group``, in one transaction.

        One result per item: ``DUPLICATE`` when ``group`` has a ``consumed`` or ``dead`` row
        for the event id (or an earlier item of the batch had the same id), without calling
        ``run``; ``CONSUMED`` when ``run`` returned and its writes committed with the
        ``consumed`` row; ``FAILED`` (with ``error``) when ``run`` raised: its writes were
        rolled back, nothing was recorded (see :meth:`record_failure`), the other items are
        unaffected; ``NOT_RUN`` after ``should_stop()`` turned true.

        Exactly once in effect: concurrent calls for one event (a rebalance, a takeover)
        commit at most one ``run``'s writes; the loser's transaction rolls back and the event
        reports ``DUPLICATE``. A ``run`` may be *called* more than once. Raises
        :class:`~outboxkit.errors.RepositoryError` when the outcome cannot be recorded:
        nothing of the batch committed.
        """

    @abc.abstractmethod
    def record_failure(self, group: str, item: InboxItem, *, reason: str) -> InboxRecord:
        """Count one failed attempt of ``item`` for ``group``; ``dead`` at :attr:`max_attempts`.

        Creates the row (``failed``, ``attempts=1``) or adds one attempt to a ``failed`` row
        and stores ``reason`` (truncated) as ``last_error``. A ``consumed`` or ``dead`` row is
        left unchanged. Returns the row as it is afterwards.
        """

    @abc.abstractmethod
    def mark_consumed(self, group: str, item: InboxItem) -> bool:
        """Record ``item`` ``consumed`` (after a side-effect handler ran outside any
        transaction). False when the row was already final."""

    @abc.abstractmethod
    def mark_dead(self, group: str, item: InboxItem, *, reason: str) -> bool:
        """Record ``item`` ``dead`` with ``reason`` (no handler, a permanent failure).
        False when the row was already final; a final row is never changed."""

    # ------------------------------------------------------------------ operations

    @abc.abstractmethod
    def get(self, group: str, event_id: str) -> InboxRecord | None:
        """The row of ``event_id`` for ``group``, or ``None``."""

    @abc.abstractmethod
    def count_by_status(self, group: str | None = None) -> dict[InboxStatus, int]:
        """Rows per status (of one group, or all); every status is present."""

    @abc.abstractmethod
    def list_by_status(
        self, status: InboxStatus, *, group: str | None = None, limit: int = 100
    ) -> list[InboxRecord]:
        """Up to ``limit`` rows in ``status``, least recently updated first."""

    @abc.abstractmethod
    def purge(self, *, older_than: float, limit: int = 10_000) -> int:
        """Delete ``consumed`` and ``dead`` rows last updated more than ``older_than``
        seconds ago (by the database clock), at most ``limit``; return how many.

        Retention: once a row is gone, a copy of its event delivered again would run again,
        so ``older_than`` must exceed the longest time a duplicate can still arrive (a
        relay's lease, a broker's redelivery after a crash: minutes, not days). ``failed``
        rows are kept: their event is still being retried.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release pooled connections this inbox created itself."""
