"""The inbox on PostgreSQL, MySQL 8 / MariaDB 10.6+ or SQLite, written once with SQLAlchemy Core.

**Consuming a batch** is one transaction on the consumer's database: the group's rows of the
batch's event ids are locked by primary key (``SELECT ... FOR UPDATE``), a ``consumed`` or
``dead`` row makes its event a duplicate, every other handler runs on the same connection,
and the successful events get their ``consumed`` rows (an ``INSERT``, or an ``UPDATE`` of a
``failed`` row) before the one commit. As in the outbox's consume, the first pass runs the
handlers without savepoints; if one raises, the pass is rolled back and replayed with a
savepoint per handler, the failed one not run again.

**Concurrent consumers of one event** (a Kafka rebalance, a Redis takeover) cannot both
commit: the second ``INSERT`` of the same primary key waits for the first transaction and
then fails with a unique violation. That rolls back the second transaction, handler writes
included, and it runs again, now finding the row ``consumed``: the event is a duplicate.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from outboxkit.backends.schema import table_ddl
from outboxkit.backends.sql.handler_passes import run_handler, run_in_passes
from outboxkit.backends.sql.store import SqlStore, as_delay
from outboxkit.errors import ConfigurationError, RepositoryError, SchemaError
from outboxkit.inbox.base import (
    DEFAULT_MAX_ATTEMPTS,
    Inbox,
    InboxItem,
    InboxRecord,
    InboxStatus,
)
from outboxkit.inbox.schema import DEFAULT_INBOX_TABLE, inbox_table
from outboxkit.messages import Outcome
from outboxkit.store import ConsumeResult, truncate_error

logger = logging.getLogger(__name__)

CONSUMED = InboxStatus.CONSUMED.value
FAILED = InboxStatus.FAILED.value
DEAD = InboxStatus.DEAD.value
FINAL = (CONSUMED, DEAD)
#: Times a transaction is run again after another consumer recorded the same event first.
CONFLICT_ATTEMPTS = 3
#: Rows deleted per statement by :meth:`SqlInbox.purge`.
PURGE_CHUNK = 500


class _ConflictError(Exception):
    """Another transaction recorded one of our events first: run ours again."""


class SqlInbox(SqlStore, Inbox):
    """:class:`~outboxkit.inbox.Inbox` in one table of the consumer's database.

    ``engine`` is the consumer's own database (where its handlers write); ``table`` the inbox
    table's name; ``max_attempts`` the failed attempts after which an event goes ``dead``.
    Thread-safe: it holds the engine (a pool), never a connection.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        table: str = DEFAULT_INBOX_TABLE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        owns_engine: bool = False,
    ) -> None:
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, not {max_attempts}")
        super().__init__(engine, owns_engine=owns_engine)
        self._table = inbox_table(self._metadata, table)
        self._max_attempts = max_attempts

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    @property
    def table_name(self) -> str:
        return self._table.name

    @property
    def inbox(self) -> sa.Table:
        """The Core table, for queries of your own."""
        return self._table

    # ------------------------------------------------------------------ schema

    def create_schema(self) -> None:
        self._check_server()
        try:
            with self.engine.begin() as conn:
                self._table.create(conn, checkfirst=True)
                present = {i["name"] for i in sa.inspect(conn).get_indexes(self._table.name)}
                for index in self._table.indexes:
                    if index.name not in present:
                        index.create(conn)
        except SQLAlchemyError as exc:
            name = self._table.name
            raise SchemaError(f"creating the inbox table {name!r} failed: {exc}") from exc

    def schema_ddl(self) -> str:
        return table_ddl([self._table], self.engine.dialect)

    def check(self) -> None:
        self._check_server()
        try:
            with self.engine.connect() as conn:
                present = sa.inspect(conn).has_table(self._table.name)
        except SQLAlchemyError as exc:
            raise RepositoryError(f"checking the inbox table failed: {exc}") from exc
        if not present:
            where = self.engine.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"inbox table {self._table.name!r} does not exist in {where}: create it "
                f"(Engine.create_schema, `outboxkit migrate`) or point the inbox at the "
                f"consumer's own database"
            )

    # ------------------------------------------------------------------ plumbing

    def _run(self, what: str, fn: Callable[[Connection], Any]) -> Any:
        """:meth:`_transact`, run again when another consumer recorded an event first."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self._transact(what, None, fn)
            except _ConflictError as conflict:
                if attempt == CONFLICT_ATTEMPTS:
                    raise RepositoryError(
                        f"{what} on {self._table.name!r}: conflicting writes persisted: "
                        f"{conflict.__cause__}"
                    ) from conflict.__cause__
                logger.debug("%s: another consumer recorded an event first; again", what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert(self, conn: Connection, rows: list[dict[str, Any]], **values: Any) -> None:
        now = self.dialect.now()
        stmt = sa.insert(self._table).values(received_at=now, updated_at=now, **values)
        try:
            conn.execute(stmt, rows)
        except IntegrityError as exc:
            raise _ConflictError() from exc

    def _lock_rows(self, conn: Connection, group: str, event_ids: Sequence[str]) -> dict[str, Any]:
        t = self._table
        query = (
            sa.select(t.c.event_id, t.c.status, t.c.attempts)
            .where(t.c.consumer_group == group, t.c.event_id.in_(sorted(set(event_ids))))
            .order_by(t.c.event_id)
        )
        return {str(r[0]): r for r in conn.execute(self._lock(query))}

    @staticmethod
    def _row(group: str, item: InboxItem, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "consumer_group": group,
            "event_id": item.event_id,
            "event_type": item.event_type,
            "service_name": item.service,
            "outbox_id": item.outbox_id,
            "status": status,
            **extra,
        }

    # ------------------------------------------------------------------ consuming

    def consume_batch(
        self,
        group: str,
        items: Sequence[InboxItem],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ConsumeResult[Any]]:
        if not items:
            return []
        what = f"consuming {len(items)} events of group {group!r} through the inbox"
        failed: dict[int, Exception] = {}
        t = self._table

        def one_pass(conn: Connection, savepoints: bool) -> list[ConsumeResult[Any]]:
            existing = self._lock_rows(conn, group, [i.event_id for i in items])
            results: list[ConsumeResult[Any]] = []
            consumed: dict[str, InboxItem] = {}
            stopped = False
            for index, item in enumerate(items):
                row = existing.get(item.event_id)
                if not stopped and should_stop is not None and should_stop():
                    stopped = True
                if stopped:
                    results.append(ConsumeResult(Outcome.NOT_RUN))
                elif (row is not None and row[1] in FINAL) or item.event_id in consumed:
                    results.append(ConsumeResult(Outcome.DUPLICATE))
                elif index in failed:
                    results.append(ConsumeResult(Outcome.FAILED, error=failed[index]))
                else:
                    results.append(
                        run_handler(
                            conn,
                            index,
                            item.run,
                            savepoints=savepoints,
                            is_transient=self._is_transient,
                        )
                    )
                    if results[-1].outcome is Outcome.CONSUMED:
                        consumed[item.event_id] = item
            now = self.dialect.now()
            retried = [e for e in consumed if e in existing]
            if retried:
                conn.execute(
                    sa.update(t)
                    .where(t.c.consumer_group == group, t.c.event_id.in_(retried))
                    .values(status=CONSUMED, consumed_at=now, updated_at=now)
                )
            fresh = [
                self._row(group, item, CONSUMED)
                for event_id, item in consumed.items()
                if event_id not in existing
            ]
            if fresh:
                self._insert(conn, fresh, consumed_at=now)
            return results

        return run_in_passes(
            lambda savepoints: self._run(what, functools.partial(one_pass, savepoints=savepoints)),
            failed,
            len(items),
        )

    def record_failure(self, group: str, item: InboxItem, *, reason: str) -> InboxRecord:
        t = self._table
        error = truncate_error(reason)

        def fn(conn: Connection) -> InboxRecord:
            row = self._lock_rows(conn, group, [item.event_id]).get(item.event_id)
            if row is None:
                status = DEAD if self._max_attempts <= 1 else FAILED
                self._insert(conn, [self._row(group, item, status, attempts=1, last_error=error)])
            elif row[1] == FAILED:
                attempts = int(row[2]) + 1
                conn.execute(
                    sa.update(t)
                    .where(t.c.consumer_group == group, t.c.event_id == item.event_id)
                    .values(
                        status=DEAD if attempts >= self._max_attempts else FAILED,
                        attempts=attempts,
                        last_error=error,
                        updated_at=self.dialect.now(),
                    )
                )
            record = self._get(conn, group, item.event_id)
            assert record is not None
            return record

        result: InboxRecord = self._run("recording a failed inbox attempt", fn)
        return result

    def _finish(self, what: str, group: str, item: InboxItem, status: str, **values: Any) -> bool:
        t = self._table

        def fn(conn: Connection) -> bool:
            row = self._lock_rows(conn, group, [item.event_id]).get(item.event_id)
            now = self.dialect.now()
            if row is None:
                self._insert(conn, [self._row(group, item, status)], **values)
                return True
            if row[1] in FINAL:
                return False
            conn.execute(
                sa.update(t)
                .where(t.c.consumer_group == group, t.c.event_id == item.event_id)
                .values(status=status, updated_at=now, **values)
            )
            return True

        done: bool = self._run(what, fn)
        return done

    def mark_consumed(self, group: str, item: InboxItem) -> bool:
        return self._finish(
            "recording an inbox event consumed",
            group,
            item,
            CONSUMED,
            consumed_at=self.dialect.now(),
        )

    def mark_dead(self, group: str, item: InboxItem, *, reason: str) -> bool:
        return self._finish(
            "recording an inbox event dead", group, item, DEAD, last_error=truncate_error(reason)
        )

    # ------------------------------------------------------------------ operations

    def _get(self, conn: Connection, group: str, event_id: str) -> InboxRecord | None:
        t = self._table
        row = (
            conn.execute(sa.select(t).where(t.c.consumer_group == group, t.c.event_id == event_id))
            .mappings()
            .first()
        )
        return None if row is None else _record(row)

    def get(self, group: str, event_id: str) -> InboxRecord | None:
        with self._begin("reading an inbox row") as conn:
            return self._get(conn, group, event_id)

    def count_by_status(self, group: str | None = None) -> dict[InboxStatus, int]:
        t = self._table
        query = sa.select(t.c.status, sa.func.count()).group_by(t.c.status)
        if group is not None:
            query = query.where(t.c.consumer_group == group)
        with self._begin("counting inbox rows") as conn:
            counts = {str(r[0]): int(r[1]) for r in conn.execute(query)}
        return {status: counts.get(status.value, 0) for status in InboxStatus}

    def list_by_status(
        self, status: InboxStatus, *, group: str | None = None, limit: int = 100
    ) -> list[InboxRecord]:
        t = self._table
        query = sa.select(t).where(t.c.status == InboxStatus(status).value)
        if group is not None:
            query = query.where(t.c.consumer_group == group)
        query = query.order_by(t.c.updated_at, t.c.event_id).limit(limit)
        with self._begin("listing inbox rows") as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def purge(self, *, older_than: float, limit: int = 10_000) -> int:
        t = self._table

        def fn(conn: Connection) -> int:
            cutoff = self._now(conn) - as_delay(older_than)
            keys = conn.execute(
                sa.select(t.c.consumer_group, t.c.event_id)
                .where(t.c.status.in_(FINAL), t.c.updated_at < cutoff)
                .order_by(t.c.updated_at)
                .limit(limit)
            ).all()
            for start in range(0, len(keys), PURGE_CHUNK):
                chunk = [(str(k[0]), str(k[1])) for k in keys[start : start + PURGE_CHUNK]]
                conn.execute(
                    sa.delete(t).where(
                        sa.tuple_(t.c.consumer_group, t.c.event_id).in_(chunk),
                        t.c.status.in_(FINAL),
                    )
                )
            return len(keys)

        purged: int = self._transact("purging inbox rows", None, fn)
        if purged:
            logger.info("purged %d inbox rows of %s", purged, self._table.name)
        return purged

    def describe(self) -> dict[str, Any]:
        facts = dict(self.dialect.describe())
        facts["inbox_table"] = self._table.name
        facts["url"] = self.engine.url.render_as_string(hide_password=True)
        return facts


def _record(row: RowMapping) -> InboxRecord:
    return InboxRecord(
        consumer_group=row["consumer_group"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        service_name=row["service_name"],
        outbox_id=None if row["outbox_id"] is None else int(row["outbox_id"]),
        status=InboxStatus(row["status"]),
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        received_at=row["received_at"],
        updated_at=row["updated_at"],
        consumed_at=row["consumed_at"],
    )


__all__ = ["SqlInbox"]
