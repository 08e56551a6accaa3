"""Writing rows: the caller's transaction, idempotent inserts by event id."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from outboxkit.backends.sql.store import (
    PENDING,
    SqlStore,
)
from outboxkit.errors import RepositoryError
from outboxkit.routing import Route
from outboxkit.store import (
    AddResult,
    NewMessage,
    OutboxWriter,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqlOutboxWriter(SqlStore, OutboxWriter):
    """Writing rows: the caller's transaction, idempotent inserts by event id."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a new transaction: committed if the block succeeds, else rolled
        back. Errors of the block propagate unchanged; failing to begin or commit raises
        :class:`RepositoryError`."""
        self._check_server()
        try:
            conn = self._own.connect()
            trans = conn.begin()
        except SQLAlchemyError as exc:
            raise self._error("cannot begin a transaction", exc) from exc
        try:
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(SQLAlchemyError):
                    trans.rollback()
                raise
            try:
                trans.commit()
            except SQLAlchemyError as exc:
                raise self._error("commit failed", exc) from exc
        finally:
            conn.close()

    # ------------------------------------------------------------------ writing

    def add(
        self, connection: Connection, route: Route, messages: Sequence[NewMessage]
    ) -> list[AddResult]:
        if not messages:
            return []
        table = self.table(route)
        self._check_server(connection)
        first: dict[str, NewMessage] = {}
        for message in messages:
            first.setdefault(message.event_id, message)
        rows = [
            {
                "event_id": m.event_id,
                "biz_type": m.event_type,
                "service_name": route.service,
                "topic": route.topic,
                "message_key": m.message_key,
                "payload": m.payload,
                "status": PENDING,
                "retry_count": 0,
                "max_retry": m.max_retry,
            }
            for m in first.values()
        ]
        try:
            # MariaDB 10.5+ has INSERT ... RETURNING (SQLAlchemy knows once connected);
            # MySQL has not: there the insert is read back.
            if self.dialect.insert_returning or connection.dialect.insert_returning:
                created, existing, stored = self._add_returning(connection, table, rows)
            else:
                created, existing, stored = self._add_then_read(connection, table, rows)
        except SQLAlchemyError as exc:
            raise self._driver_error(f"inserting {len(rows)} outbox rows", route, exc) from exc
        results: list[AddResult] = []
        reported: set[str] = set()
        for message in messages:
            event_id = message.event_id
            is_new = event_id in created and event_id not in reported
            outbox_id = created.get(event_id) or existing.get(event_id)
            if outbox_id is None:
                raise RepositoryError(
                    f"outbox row of event {event_id} not found in {route.table!r} after insert"
                )
            reported.add(event_id)
            results.append(
                AddResult(
                    outbox_id=outbox_id,
                    event_id=event_id,
                    created=is_new,
                    existing_payload=None if is_new else stored.get(event_id),
                )
            )
        return results

    def _add_returning_statement(self, table: sa.Table) -> Any:
        """The ignore-insert of :meth:`_add_returning` for ``table`` (built once, reused)."""
        now = self.dialect.now()
        returned: list[Any] = [table.c.id, table.c.event_id]
        if self.dialect.insert_returning:
            # RETURNING of an ignore-insert names the inserted rows only (PostgreSQL's
            # ON CONFLICT DO NOTHING, SQLite's OR IGNORE).
            returned.append(sa.true())
        else:
            # MariaDB: ON DUPLICATE KEY UPDATE returns the duplicates too. A new row's
            # created_at is this statement's clock (constant within a statement); an
            # existing one's is older. (INSERT IGNORE would return only new rows, but it
            # also turns a too-long value into a silently truncated one.)
            returned.append(table.c.created_at == now)
        if self.dialect.notify is not None:
            # Wakes relays in other processes on commit, in the same round trip.
            returned.append(self.dialect.notify(table.name))
        stmt = self.dialect.insert_ignore(table).values(
            next_retry_at=now, created_at=now, updated_at=now
        )
        return stmt.returning(*returned)

    def _add_returning(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
        """One multi-row insert whose RETURNING names exactly the rows it inserted."""
        stmt = self._statements.get(("add_returning", table.name))
        if stmt is None:
            stmt = self._statements[("add_returning", table.name)] = self._add_returning_statement(
                table
            )
        created = {str(r[1]): int(r[0]) for r in conn.execute(stmt, rows) if r[2]}
        missing = [r["event_id"] for r in rows if r["event_id"] not in created]
        existing: dict[str, int] = {}
        stored: dict[str, str] = {}
        if missing:
            # Only duplicates get here: reading their payload too costs nothing extra.
            query = sa.select(table.c.id, table.c.event_id, table.c.payload).where(
                table.c.event_id.in_(missing)
            )
            for row in conn.execute(query):
                existing[str(row[1])] = int(row[0])
                stored[str(row[1])] = str(row[2])
        return created, existing, stored

    def _add_then_read(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
        """Without RETURNING: read the server clock and the known ids, executemany, read ids.

        The clock is bound as a value so the driver can batch the insert (PyMySQL only
        batches ``VALUES`` made of placeholders).
        """
        event_ids = [r["event_id"] for r in rows]
        now_expr = self.dialect.now()
        null: sa.ColumnClause[Any] = sa.literal_column("NULL")
        # One round trip; the first row always exists and carries the clock. (An outer join
        # of a one-row clock to the table would be simpler but MariaDB scans for it.)
        before = conn.execute(
            sa.union_all(
                sa.select(
                    now_expr.label("now"),
                    null.label("id"),
                    null.label("event_id"),
                    null.label("payload"),
                ),
                sa.select(now_expr, table.c.id, table.c.event_id, table.c.payload).where(
                    table.c.event_id.in_(event_ids)
                ),
            )
        ).all()
        now = before[0][0]
        known = {str(r[2]) for r in before if r[2] is not None}
        stored = {str(r[2]): str(r[3]) for r in before if r[2] is not None}
        fresh = [
            {**r, "next_retry_at": now, "created_at": now, "updated_at": now}
            for r in rows
            if r["event_id"] not in known
        ]
        if fresh:
            conn.execute(self.dialect.insert_ignore(table), fresh)
        # A locking read sees rows other transactions committed since our snapshot.
        ids = self._ids_by_event_id(conn, table, event_ids, lock=True)
        created = {e: i for e, i in ids.items() if e not in known}
        existing = {e: i for e, i in ids.items() if e in known}
        return created, existing, stored

    def _ids_by_event_id(
        self, conn: Connection, table: sa.Table, event_ids: Sequence[str], *, lock: bool
    ) -> dict[str, int]:
        query = sa.select(table.c.id, table.c.event_id).where(table.c.event_id.in_(event_ids))
        if lock:
            query = query.with_for_update(read=True)
        return {str(r[1]): int(r[0]) for r in conn.execute(query)}
