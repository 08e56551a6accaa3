"""The consumer's statements: consume in one transaction, reads, final marks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from outboxkit.backends.sql.store import (
    CONSUMED,
    DEAD,
    OPEN_STATUSES,
    SqlStore,
    row_message,
)
from outboxkit.errors import RepositoryError
from outboxkit.messages import OutboxMessage
from outboxkit.repository import (
    ConsumeOutcome,
    ConsumeResult,
    truncate_error,
)
from outboxkit.routing import Route

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ConsumerSide(SqlStore):
    """The consumer's statements: consume in one transaction, reads, final marks."""

    def consume(
        self, route: Route, outbox_id: int, fn: Callable[[Connection], T]
    ) -> ConsumeResult[T]:
        table = self.table(route)
        self._check_server()
        what = f"consuming row {outbox_id} of {route.table!r}"
        try:
            conn = self._own.connect()
            trans = conn.begin()
        except SQLAlchemyError as exc:
            raise RepositoryError(f"{what} failed: {exc}") from exc
        try:
            try:
                status = conn.execute(
                    self._lock(sa.select(table.c.status).where(table.c.id == outbox_id))
                ).scalar_one_or_none()
            except SQLAlchemyError as exc:
                raise RepositoryError(f"{what} failed: {exc}") from exc
            if status is None or status not in OPEN_STATUSES:
                trans.rollback()
                if status is None:
                    return ConsumeResult(ConsumeOutcome.MISSING)
                return ConsumeResult(ConsumeOutcome.DUPLICATE)
            value = fn(conn)  # may raise anything: rolled back below, propagated unchanged
            try:
                now = self.dialect.now()
                conn.execute(
                    sa.update(table)
                    .where(table.c.id == outbox_id)
                    .values(
                        status=CONSUMED,
                        consumed_at=now,
                        last_error=None,
                        next_retry_at=None,
                        lease_token=None,
                        updated_at=now,
                    )
                )
                trans.commit()
            except SQLAlchemyError as exc:
                raise RepositoryError(f"{what} failed: {exc}") from exc
            return ConsumeResult(ConsumeOutcome.CONSUMED, value)
        except BaseException:
            if trans.is_active:
                with contextlib.suppress(SQLAlchemyError):
                    trans.rollback()
            raise
        finally:
            conn.close()

    def get(self, route: Route, outbox_id: int) -> OutboxMessage | None:
        table = self.table(route)
        with self._begin("reading a row", route) as conn:
            row = conn.execute(sa.select(table).where(table.c.id == outbox_id)).mappings().first()
        return None if row is None else row_message(row)

    def get_by_event_id(self, route: Route, event_id: str) -> OutboxMessage | None:
        table = self.table(route)
        with self._begin("reading a row", route) as conn:
            row = (
                conn.execute(sa.select(table).where(table.c.event_id == event_id))
                .mappings()
                .first()
            )
        return None if row is None else row_message(row)

    def mark_consumed(self, route: Route, outbox_id: int) -> bool:
        table = self.table(route)
        with self._begin("marking a row consumed", route) as conn:
            now = self.dialect.now()
            result = conn.execute(
                sa.update(table)
                .where(table.c.id == outbox_id, table.c.status.in_(OPEN_STATUSES))
                .values(
                    status=CONSUMED,
                    consumed_at=now,
                    last_error=None,
                    next_retry_at=None,
                    lease_token=None,
                    updated_at=now,
                )
            )
            return bool(result.rowcount)

    def mark_dead(self, route: Route, outbox_id: int, *, reason: str) -> bool:
        table = self.table(route)
        with self._begin("marking a row dead", route) as conn:
            result = conn.execute(
                sa.update(table)
                .where(table.c.id == outbox_id, table.c.status.in_(OPEN_STATUSES))
                .values(
                    status=DEAD,
                    last_error=truncate_error(reason),
                    next_retry_at=None,
                    lease_token=None,
                    updated_at=self.dialect.now(),
                )
            )
            return bool(result.rowcount)
