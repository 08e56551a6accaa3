"""What operators need: listing, requeueing dead rows, counts and backlog age."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

import sqlalchemy as sa

from outboxkit.backends.sql.store import (
    DEAD,
    PENDING,
    SqlStore,
    row_message,
)
from outboxkit.messages import OutboxMessage, Status
from outboxkit.routing import Route

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Operations(SqlStore):
    """What operators need: listing, requeueing dead rows, counts and backlog age."""

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

    # ------------------------------------------------------------------ operations

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
