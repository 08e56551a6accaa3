"""What operators run against a table while workers keep going: listings and counts, filtered
finds, guarded bulk requeue and delete, the figures of a status report, and the
housekeeping lock (the :class:`~outboxkit.store.AdminStore` role).

Every bulk change names ids *and* the status it expects, so it composes with the workers'
own guarded transitions: a row a worker moved meanwhile is simply not changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.backends.sql.store import (
    DEAD,
    OPEN_STATUSES,
    PENDING,
    PUBLISHED,
    SqlStore,
    row_message,
)
from outboxkit.errors import RepositoryError
from outboxkit.messages import OutboxMessage, Status
from outboxkit.routing import Route
from outboxkit.store import AdminStore, HousekeepingLock, RowFilter

logger = logging.getLogger(__name__)


def _like_literal(text: str) -> str:
    """``text`` as a ``LIKE`` pattern matching itself anywhere (wildcards escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlAdminStore(SqlStore, AdminStore):
    """Operator queries and guarded bulk changes (see :class:`~outboxkit.store.AdminStore`)."""

    def _where(self, table: sa.Table, row_filter: RowFilter) -> ColumnElement[bool]:
        clauses: list[ColumnElement[bool]] = [table.c.status == row_filter.status.value]
        if row_filter.ids is not None:
            clauses.append(table.c.id.in_(list(row_filter.ids)))
        if row_filter.event_types:
            clauses.append(table.c.biz_type.in_(list(row_filter.event_types)))
        if row_filter.message_key is not None:
            clauses.append(table.c.message_key == row_filter.message_key)
        if row_filter.error_contains:
            clauses.append(
                table.c.last_error.like(_like_literal(row_filter.error_contains), escape="\\")
            )
        if row_filter.changed_after is not None:
            clauses.append(table.c.updated_at >= row_filter.changed_after)
        if row_filter.changed_before is not None:
            clauses.append(table.c.updated_at < row_filter.changed_before)
        return sa.and_(*clauses)

    def list_by_status(
        self, route: Route, status: Status, *, limit: int = 100, after_id: int = 0
    ) -> list[OutboxMessage]:
        table = self.table(route)
        query = (
            sa.select(table)
            .where(table.c.status == Status(status).value, table.c.id > after_id)
            .order_by(table.c.id)
            .limit(max(limit, 0))
        )
        with self._begin("listing rows", route) as conn:
            return [row_message(row) for row in conn.execute(query).mappings()]

    def requeue_dead(self, route: Route, ids: Sequence[int] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        table = self.table(route)
        condition = table.c.status == DEAD
        if ids is not None:
            condition = sa.and_(condition, table.c.id.in_(list(ids)))
        with self._begin("requeueing dead rows", route) as conn:
            now = self.dialect.now()
            result = conn.execute(
                sa.update(table)
                .where(condition)
                .values(
                    status=PENDING,
                    retry_count=0,
                    next_retry_at=now,
                    lease_token=None,
                    updated_at=now,
                )
            )
            return int(result.rowcount)

    def count_by_status(self, route: Route) -> dict[Status, int]:
        table = self.table(route)
        counts = dict.fromkeys(Status, 0)
        with self._begin("counting rows", route) as conn:
            for status, count in conn.execute(
                sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
            ):
                with contextlib.suppress(ValueError):
                    counts[Status(status)] = int(count)
        return counts

    def oldest_pending_age(self, route: Route) -> float | None:
        table = self.table(route)
        with self._begin("measuring the pending backlog", route) as conn:
            oldest, now = conn.execute(
                sa.select(sa.func.min(table.c.created_at), self.dialect.now()).where(
                    table.c.status == PENDING
                )
            ).one()
        if oldest is None:
            return None
        age: timedelta = now - oldest
        return max(0.0, age.total_seconds())

    def find_rows(
        self, route: Route, row_filter: RowFilter, *, limit: int = 100, after_id: int = 0
    ) -> list[OutboxMessage]:
        table = self.table(route)
        query = (
            sa.select(table)
            .where(self._where(table, row_filter), table.c.id > after_id)
            .order_by(table.c.id)
            .limit(max(limit, 0))
        )
        with self._begin("finding rows", route) as conn:
            return [row_message(row) for row in conn.execute(query).mappings()]

    def count_rows(self, route: Route, row_filter: RowFilter) -> int:
        table = self.table(route)
        query = sa.select(sa.func.count()).select_from(table).where(self._where(table, row_filter))
        with self._begin("counting rows", route) as conn:
            return int(conn.execute(query).scalar_one())

    def requeue_rows(self, route: Route, ids: Sequence[int]) -> set[int]:
        def values(conn: sa.Connection) -> dict[str, object]:
            now = self._now(conn)
            return {
                "status": PENDING,
                "retry_count": 0,
                "next_retry_at": now,
                "lease_token": None,
                "updated_at": now,
            }

        return self._guarded_update(
            "requeueing dead rows", route, ids, lambda t: t.c.status == DEAD, values
        )

    def delete_rows(
        self,
        route: Route,
        ids: Sequence[int],
        *,
        status: Status,
        changed_before: datetime | None = None,
    ) -> set[int]:
        table = self.table(route)
        wanted = sorted(set(ids))
        if not wanted:
            return set()
        expected = Status(status).value
        guard = [table.c.id.in_(wanted), table.c.status == expected]
        if changed_before is not None:
            guard.append(table.c.updated_at < changed_before)

        def delete(conn: sa.Connection) -> set[int]:
            # Lock by primary key in id order (the order every writer uses), keep the rows
            # still in the expected status, delete exactly those.
            rows = conn.execute(
                self._lock(sa.select(table.c.id).where(*guard).order_by(table.c.id))
            )
            doomed = [int(r[0]) for r in rows]
            if doomed:
                conn.execute(sa.delete(table).where(table.c.id.in_(doomed), *guard[1:]))
            return set(doomed)

        return self._transact("deleting rows", route, delete)

    def count_published_before(self, route: Route, *, older_than: float) -> int:
        table = self.table(route)

        def count(conn: sa.Connection) -> int:
            cutoff = self._now(conn) - timedelta(seconds=max(older_than, 0.0))
            query = (
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.status == PUBLISHED, table.c.published_at < cutoff)
            )
            return int(conn.execute(query).scalar_one())

        return self._transact("counting stuck published rows", route, count)

    def retry_counts(self, route: Route) -> dict[int, int]:
        table = self.table(route)
        query = (
            sa.select(table.c.retry_count, sa.func.count())
            .where(table.c.status.in_(OPEN_STATUSES))
            .group_by(table.c.retry_count)
        )
        with self._begin("counting retries", route) as conn:
            return {int(retries): int(n) for retries, n in conn.execute(query)}

    @contextlib.contextmanager
    def housekeeping_lock(self, name: str) -> Iterator[HousekeepingLock]:
        lock = self.dialect.session_lock
        if lock is None:
            yield HousekeepingLock(acquired=True)
            return
        self._check_server()
        key = lock.key(name)
        try:
            conn = self._own.connect()
        except SQLAlchemyError as exc:
            raise RepositoryError(f"taking the lock {name!r} failed: {exc}") from exc
        try:
            try:
                acquired = bool(conn.execute(sa.text(lock.acquire), {"key": key}).scalar())
                conn.commit()  # a session-level lock outlives the transaction
            except SQLAlchemyError as exc:
                raise RepositoryError(f"taking the lock {name!r} failed: {exc}") from exc
            try:
                yield HousekeepingLock(acquired=acquired)
            finally:
                if acquired:
                    try:
                        conn.execute(sa.text(lock.release), {"key": key})
                        conn.commit()
                    except SQLAlchemyError:
                        # The session is gone or broken; closing it below frees the lock.
                        logger.warning("releasing the lock %r failed", name, exc_info=True)
                        conn.invalidate()
        finally:
            conn.close()
