"""The storage roles: what each stage of the flow needs of the outbox tables.

Each stage depends on its role only: the publisher on :class:`OutboxWriter`, the relay on
:class:`RelayStore`, the consumer on :class:`ConsumeStore`, operators and housekeeping on
:class:`AdminStore`, migrations on :class:`SchemaStore`. A
:class:`~outboxkit.store.repository.Repository` is all of them over one set of tables;
``outboxkit.testing.repository_contract`` checks each role with a suite of its own.

The docstrings are the specification. Rules that hold for every method:

* **One clock.** Due-ness, leases, ``published_at`` ages and every timestamp written are
  judged by the *database server's* clock in UTC (SQLite: the process clock, since it is
  embedded), so relays on several hosts agree even when their own clocks drift.
* **Guarded transitions.** Every state change names the state it expects in its ``WHERE``
  clause and reports whether it happened. A late ``mark_published`` never overwrites
  ``consumed`` or ``dead``, nor erases a retry a consumer scheduled meanwhile (the residual
  race of the Go system): claims carry a fencing ``lease_token`` that any other writer
  clears.
* **Own transactions.** Apart from :meth:`OutboxWriter.add`, which writes inside the
  caller's connection, each method runs in its own short transaction and commits before
  returning.
* **Thread safety.** A store is shared by all threads; it holds a connection pool, never a
  connection.
* Database errors are raised as :class:`~outboxkit.errors.RepositoryError` with the cause
  chained. A deadlock, a serialization failure or a connection found dead is retried at
  once on a fresh transaction (a few times) before that: it says nothing about the rows.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.messages import OutboxMessage, Outcome, Status
from outboxkit.routing import Route
from outboxkit.store.values import (
    AddResult,
    Claim,
    ConsumeItem,
    ConsumeResult,
    HousekeepingLock,
    NewMessage,
    RowFilter,
)

T = TypeVar("T")


class NewRowListener(abc.ABC):
    """Notifications that rows became claimable, sent by publishers in other processes.

    Used by one thread. A listener may miss notifications (a reconnect, a full queue): it
    only shortens the wait of a relay that polls anyway.
    """

    @abc.abstractmethod
    def wait(self, timeout: float) -> set[str]:
        """Block up to ``timeout`` seconds; the tables that got new rows meanwhile.

        Raises :class:`~outboxkit.errors.RepositoryError` when the connection is lost.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening and release the connection. Idempotent."""


class OutboxWriter(abc.ABC):
    """Publishing: rows written in the caller's transaction."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """A context manager yielding a connection inside a new transaction.

        The transaction commits when the block succeeds and rolls back when it raises; the
        block's exception propagates unchanged. The publisher uses it when the caller gave
        no connection of its own, and the engine to run local handlers.
        """

    @abc.abstractmethod
    def add(
        self, connection: Connection, route: Route, messages: Sequence[NewMessage]
    ) -> list[AddResult]:
        """Insert ``messages`` as ``pending`` rows, due now, inside ``connection``'s transaction.

        Does not commit: the rows exist if and only if the caller's transaction commits.
        A message whose ``event_id`` is already in the table is not inserted again; its
        result names the existing row with ``created=False``. Must not abort the caller's
        transaction on such a duplicate.
        """


class FailureMarks(abc.ABC):
    """Recording that an event failed, for the relay (the broker refused a row) and the
    consumer (a handler failed) alike."""

    @abc.abstractmethod
    def schedule_retry(
        self,
        route: Route,
        outbox_id: int,
        *,
        reason: str,
        backoff: Callable[[int], float],
        token: str | None = None,
    ) -> Outcome:
        """Count one failed attempt and schedule the next, or give up.

        With ``token`` (a relay failing a claimed row) the row must be ``pending`` under
        that lease; without (a consumer whose handler failed) it must be ``pending`` or
        ``published``. Then ``n = retry_count + 1``; if ``n >= max_retry`` the row goes
        ``dead`` (so ``max_retry`` counts attempts in all, the first included), else back
        to ``pending`` due at ``now + backoff(n)``. Writes
        ``retry_count=n`` and ``last_error`` (truncated to :data:`MAX_LAST_ERROR`
        characters) and clears the lease.
        """

    @abc.abstractmethod
    def mark_dead(
        self,
        route: Route,
        outbox_id: int,
        *,
        reason: str,
        event_id: str | None = None,
        event_type: str | None = None,
        published_only: bool = False,
    ) -> bool:
        """``pending``/``published`` -> ``dead`` with ``last_error=reason``; never from final.

        With ``event_id`` (and ``event_type``), only if the row is that event (see
        :class:`ConsumeItem`): a message naming a row must never condemn another event.
        With ``published_only``, only a ``published`` row: a receipt speaks of an event a
        relay has sent, and must not finish one that was never sent.
        """


class RowReads(abc.ABC):
    """Reading one row, for the consumer (before a side effect) and operators alike."""

    @abc.abstractmethod
    def get(self, route: Route, outbox_id: int) -> OutboxMessage | None:
        """The row, or ``None``."""

    @abc.abstractmethod
    def get_by_event_id(self, route: Route, event_id: str) -> OutboxMessage | None:
        """The row with this event id, or ``None``."""


class RelayStore(FailureMarks):
    """The relay's claims and marks."""

    @abc.abstractmethod
    def claim_due(self, route: Route, *, limit: int, lease_seconds: float) -> Claim:
        """Claim up to ``limit`` due ``pending`` rows, oldest due first.

        Due means ``next_retry_at <= now``. Uses ``FOR UPDATE SKIP LOCKED`` so concurrent
        claimers get disjoint rows, then sets a fresh ``lease_token`` and pushes
        ``next_retry_at`` to ``now + lease_seconds``: if the claimer dies, the rows become
        due again when the lease runs out. Status stays ``pending``.
        """

    @abc.abstractmethod
    def mark_published(self, route: Route, ids: Sequence[int], *, token: str) -> set[int]:
        """``pending`` -> ``published`` for the rows still held under ``token``.

        Sets ``published_at=now`` and clears ``next_retry_at``, ``last_error`` and the lease.
        Returns the ids that changed; a row consumed, retried, dead or re-claimed meanwhile
        is left alone. Locks rows in id order (as :meth:`consume_batch` does), so it never
        deadlocks with a consumer.
        """

    @abc.abstractmethod
    def release(self, route: Route, ids: Sequence[int], *, token: str, delay: float) -> set[int]:
        """Give claimed rows back without counting an attempt (broker outage, shutdown).

        The rows stay ``pending``, due again in ``delay`` seconds, lease cleared,
        ``retry_count`` unchanged. Returns the ids that changed.
        """

    @abc.abstractmethod
    def republish_stale(self, route: Route, *, older_than: float, limit: int) -> int:
        """Send back to ``pending`` rows ``published`` long ago with no outcome recorded.

        Such rows were lost between broker and consumer (a broker that lost data, a
        consumer that crashed before recording anything), or their consumer is only slow.
        A row with ``retry_count`` n is sent back once it has been ``published`` for
        ``older_than * 2 ** min(n, RESCUE_DOUBLINGS)`` seconds: the first rescue comes
        after ``older_than``, and a row whose consumer is merely behind is re-sent a few
        times rather than every ``older_than``. Each rescue counts as an attempt, so a row
        that is never consumed (a message that crashes every consumer before it records
        anything) still goes ``dead`` once ``max_retry`` is reached, only later: with the
        defaults (300 s, 20 attempts) after about 42 hours. Returns how many rows changed.
        """

    @property
    def notifies_new_rows(self) -> bool:
        """Whether :meth:`new_row_listener` gives a listener (without connecting)."""
        return False

    def new_row_listener(self) -> NewRowListener | None:
        """A listener for rows committed by any process, where the database can notify
        (PostgreSQL ``LISTEN``); ``None`` where relays must poll (the default)."""
        return None


class ConsumeStore(FailureMarks, RowReads):
    """The consumer's reads and marks: a handler's writes committed with ``consumed``."""

    @abc.abstractmethod
    def consume(
        self,
        route: Route,
        outbox_id: int,
        fn: Callable[[Connection], T],
        *,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> ConsumeResult[T]:
        """Run ``fn`` and mark the row ``consumed`` in one transaction.

        This is the Go ``ConsumeAndMarkConsumed``.

        Locks the row first. A missing row gives ``MISSING``, a row whose identity differs
        from ``event_id``/``event_type`` (see :class:`ConsumeItem`) ``MISMATCH`` and a
        ``consumed``/``dead`` row ``DUPLICATE``, without calling ``fn``. Otherwise
        (``pending`` or ``published``) ``fn(connection)`` runs inside the transaction; if
        it raises, everything rolls back and the exception propagates unchanged.
        Concurrent calls for one row serialize on the lock, so ``fn`` takes effect at most
        once.
        """

    @abc.abstractmethod
    def consume_batch(
        self,
        route: Route,
        items: Sequence[ConsumeItem],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ConsumeResult[Any]]:
        """:meth:`consume` for a received batch, in one transaction; one result per item.

        Locks the batch's rows in one statement (in id order, the order every other
        writer locks them in), runs each item's ``run`` in the order given, marks every
        successful row ``consumed`` in one statement and commits once. A ``run`` that
        raises rolls back only its own writes (a savepoint) and gives ``FAILED`` with the
        exception; the other items are unaffected. Items after ``should_stop()`` turned
        true are ``NOT_RUN``. Exactly once in effect holds per item, as in :meth:`consume`:
        a ``run`` may be *called* more than once (the batch is replayed after a deadlock
        or a handler failure), but only one call's writes ever commit.

        Raises :class:`~outboxkit.errors.RepositoryError` when the outcome cannot be
        recorded (database unreachable, connection lost): nothing of the batch committed.
        """

    @abc.abstractmethod
    def mark_consumed(
        self,
        route: Route,
        outbox_id: int,
        *,
        event_id: str | None = None,
        event_type: str | None = None,
        published_only: bool = False,
    ) -> bool:
        """``pending``/``published`` -> ``consumed`` (after a side effect outside any tx,
        or on a receipt).

        With ``event_id`` (and ``event_type``), only if the row is that event (see
        :class:`ConsumeItem`). With ``published_only``, only a ``published`` row (a
        receipt, see :meth:`mark_dead`).
        """


class AdminStore(RowReads):
    """What operators and housekeeping read and repair: counts, listings, requeues,
    deletions, the housekeeping lock and the database's clock."""

    @abc.abstractmethod
    def list_by_status(
        self, route: Route, status: Status, *, limit: int = 100, after_id: int = 0
    ) -> list[OutboxMessage]:
        """Up to ``limit`` rows in ``status`` with ``id > after_id``, by id (for paging).

        For operators: inspecting dead letters before requeueing them, or a stuck backlog.
        """

    @abc.abstractmethod
    def requeue_dead(self, route: Route, ids: Sequence[int] | None = None) -> int:
        """``dead`` -> ``pending`` due now with ``retry_count=0`` (all dead rows if no ids)."""

    @abc.abstractmethod
    def count_by_status(self, route: Route) -> dict[Status, int]:
        """Rows per status; every status is present (0 when none)."""

    @abc.abstractmethod
    def oldest_pending_age(self, route: Route) -> float | None:
        """Seconds since the oldest ``pending`` row was created, or ``None`` when none."""

    @abc.abstractmethod
    def find_rows(
        self, route: Route, row_filter: RowFilter, *, limit: int = 100, after_id: int = 0
    ) -> list[OutboxMessage]:
        """Up to ``limit`` rows matching ``row_filter`` with ``id > after_id``, by id.

        The paging primitive of every bulk operation: callers walk a table in bounded
        batches instead of loading or locking it whole.
        """

    @abc.abstractmethod
    def count_rows(self, route: Route, row_filter: RowFilter) -> int:
        """How many rows match ``row_filter`` (what a ``--dry-run`` reports)."""

    @abc.abstractmethod
    def requeue_rows(self, route: Route, ids: Sequence[int]) -> set[int]:
        """``dead`` -> ``pending`` due now, ``retry_count=0``, lease cleared, for ``ids``.

        Guarded: a row among ``ids`` that is not ``dead`` any more (requeued by someone
        else, deleted) is left alone. Returns the ids that changed, so a caller can say
        which of the ids it was given did nothing. Safe while workers run.
        """

    @abc.abstractmethod
    def delete_rows(
        self,
        route: Route,
        ids: Sequence[int],
        *,
        status: Status,
        changed_before: datetime | None = None,
    ) -> set[int]:
        """Delete the rows among ``ids`` that are still in ``status`` (and, with
        ``changed_before``, still unchanged since before it); the ids deleted.

        Guarded by status, so a purge of ``dead`` rows never deletes one that was requeued
        meanwhile; guarded by ``changed_before``, so a retention purge never deletes a row
        that was requeued and ended again (fresh) since it was found. Meant for final
        statuses (``consumed``, ``dead``); safe while workers run.
        """

    @abc.abstractmethod
    def count_published_before(self, route: Route, *, older_than: float) -> int:
        """Rows ``published`` more than ``older_than`` seconds ago and still not consumed:
        the ones :meth:`republish_stale` will send again (stuck past the redelivery time)."""

    @abc.abstractmethod
    def retry_counts(self, route: Route) -> dict[int, int]:
        """For the rows not yet final (``pending``, ``published``): ``retry_count -> rows``.

        Only counts that occur are keys. The raw data of a retry histogram.
        """

    @abc.abstractmethod
    def housekeeping_lock(self, name: str) -> contextlib.AbstractContextManager[HousekeepingLock]:
        """Try, without waiting, to take the lock called ``name`` across every process
        using this database, for the duration of the block.

        Yields a :class:`HousekeepingLock` that is falsy when another holder has it; the
        block should then do nothing. Held on a connection of its own, so a process that
        dies releases it (PostgreSQL ``pg_try_advisory_lock``, MySQL ``GET_LOCK``). Where
        the database has no such lock (SQLite, embedded: one host) it is always acquired.
        """

    @abc.abstractmethod
    def now(self) -> datetime:
        """The clock every due-ness decision uses (naive UTC)."""


class SchemaStore(abc.ABC):
    """The tables: created, described for migrations, checked."""

    @abc.abstractmethod
    def create_schema(self, routes: Iterable[Route]) -> None:
        """Create each route's table and indexes unless they exist. Idempotent.

        Runs on a connection of its own, never inside a caller's transaction (DDL commits
        implicitly on MySQL).
        """

    @abc.abstractmethod
    def schema_ddl(self, routes: Iterable[Route]) -> str:
        """The SQL that :meth:`create_schema` would run on an empty database, for Alembic
        or plain migrations; needs no connection."""

    def schema_upgrade_ddl(self, routes: Iterable[Route]) -> str:
        """The SQL :meth:`create_schema` would run on *this* database now: ``ALTER TABLE``
        statements for an existing table that lacks columns or indexes (one the Go system
        created), ``CREATE`` for a missing one. Changes nothing. The default, for
        repositories that cannot inspect, is :meth:`schema_ddl`."""
        return self.schema_ddl(routes)

    @abc.abstractmethod
    def table_for(self, route: Route, metadata: sa.MetaData) -> sa.Table:
        """``route``'s outbox table (columns and indexes) as a Core table on ``metadata``.

        For schema tools that compare a ``MetaData`` with the database, above all Alembic
        autogenerate: an application that adds its outbox tables to its own
        ``Base.metadata`` gets them created by its migrations and never dropped as unknown
        tables. The table is exactly what :meth:`create_schema` creates, so a table made
        either way satisfies the other. Idempotent: when ``metadata`` already holds a table
        of that name, it is returned unchanged. Needs no database connection.
        """

    def tables(self, routes: Iterable[Route], metadata: sa.MetaData) -> list[sa.Table]:
        """:meth:`table_for` of each route, in order."""
        return [self.table_for(route, metadata) for route in routes]

    @abc.abstractmethod
    def has_table(self, route: Route) -> bool:
        """Whether the route's table exists, so operators get "no such table" in words
        rather than a driver error, and an engine starting consumers notices a database
        that lacks the table (it reads another database than the producers write).
        Raises :class:`~outboxkit.errors.RepositoryError` when the database cannot be
        reached."""
