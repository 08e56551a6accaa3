"""The relay's statements: fenced claims, guarded marks, retries, the stale rescue."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends.sql.store import (
    CLAIM_KNOWN_COLUMNS,
    DEAD,
    OPEN_STATUSES,
    PENDING,
    PUBLISHED,
    SqlStore,
    as_delay,
    row_message,
)
from outboxkit.messages import Outcome, Status
from outboxkit.routing import Route
from outboxkit.store import (
    RESCUE_DOUBLINGS,
    Claim,
    NewRowListener,
    RelayStore,
    rescue_wait,
    truncate_error,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqlRelayStore(SqlStore, RelayStore):
    """The relay's statements: fenced claims, guarded marks, retries, the stale rescue."""

    def claim_due(self, route: Route, *, limit: int, lease_seconds: float) -> Claim:
        token = str(uuid.uuid4())
        if limit <= 0:
            return Claim(token=token, messages=[])
        table = self.table(route)
        now = self.dialect.now()

        def due_rows(*columns: Any) -> sa.Select[Any]:
            """The oldest due rows, locked, skipping those another claimer holds."""
            return self._lock(
                sa.select(*columns)
                .where(table.c.status == PENDING, table.c.next_retry_at <= now)
                .order_by(table.c.next_retry_at, table.c.id)
                .limit(limit),
                skip_locked=True,
            )

        def claim(conn: Connection) -> Claim:
            # Not reading what the claim knows saves the driver parsing two timestamps
            # and two strings per row (PyMySQL parses in Python).
            read = [c for c in table.c if c.name not in CLAIM_KNOWN_COLUMNS]
            rows = conn.execute(due_rows(*read, now.label("db_now"))).mappings().all()
            if not rows:
                return Claim(token=token, messages=[])
            db_now: datetime = rows[0]["db_now"]
            lease_until = db_now + as_delay(lease_seconds)
            ids = [int(r["id"]) for r in rows]
            conn.execute(
                sa.update(table)
                .where(table.c.id.in_(ids))
                .values(lease_token=token, next_retry_at=lease_until, updated_at=db_now)
            )
            messages = [
                row_message(
                    r,
                    status=Status.PENDING,
                    lease_token=token,
                    next_retry_at=lease_until,
                    updated_at=db_now,
                )
                for r in rows
            ]
            return Claim(token=token, messages=messages)

        def claim_in_one_statement(conn: Connection) -> Claim:
            # The rows are chosen and locked by the subquery, exactly as above, and leased
            # by the UPDATE around it; RETURNING does not keep the subquery's order, so the
            # claim order (due time, then id) is restored from the old due time.
            due = due_rows(table.c.id, table.c.next_retry_at.label("due_at")).subquery("due")
            stmt = (
                sa.update(table)
                .where(table.c.id == due.c.id)
                .values(
                    lease_token=token,
                    next_retry_at=now + sa.literal(as_delay(lease_seconds), sa.Interval()),
                    updated_at=now,
                )
                .returning(*table.c, due.c.due_at)
            )
            rows = sorted(conn.execute(stmt).mappings().all(), key=lambda r: (r["due_at"], r["id"]))
            return Claim(token=token, messages=[row_message(r) for r in rows])

        if self.dialect.update_returning_old:
            result = self._statement("claiming due rows", route, claim_in_one_statement)
        else:
            result = self._transact("claiming due rows", route, claim)
        if result.messages:
            logger.debug(
                "claimed %d rows of %s under lease %s", len(result.messages), route.table, token
            )
        return result

    def mark_published(self, route: Route, ids: Sequence[int], *, token: str) -> set[int]:
        def values(_conn: Connection) -> dict[str, Any]:
            now = self.dialect.now()
            return {
                "status": PUBLISHED,
                "published_at": now,
                "next_retry_at": None,
                "last_error": None,
                "lease_token": None,
                "updated_at": now,
            }

        return self._guarded_update(
            "marking rows published",
            route,
            ids,
            lambda table: sa.and_(table.c.status == PENDING, table.c.lease_token == token),
            values,
        )

    def release(self, route: Route, ids: Sequence[int], *, token: str, delay: float) -> set[int]:
        def values(conn: Connection) -> dict[str, Any]:
            now = self._now(conn)
            return {"next_retry_at": now + as_delay(delay), "lease_token": None, "updated_at": now}

        return self._guarded_update(
            "releasing claimed rows",
            route,
            ids,
            lambda table: sa.and_(table.c.status == PENDING, table.c.lease_token == token),
            values,
        )

    def schedule_retry(
        self,
        route: Route,
        outbox_id: int,
        *,
        reason: str,
        backoff: Callable[[int], float],
        token: str | None = None,
    ) -> Outcome:
        table = self.table(route)

        def retry(conn: Connection) -> tuple[Outcome, int]:
            now = self.dialect.now()
            row = conn.execute(
                self._lock(
                    sa.select(
                        table.c.status,
                        table.c.retry_count,
                        table.c.max_retry,
                        table.c.lease_token,
                        now.label("db_now"),
                    ).where(table.c.id == outbox_id)
                )
            ).first()
            if row is None:
                return Outcome.SKIPPED, 0
            status, retry_count, max_retry, lease, db_now = row
            if token is not None:
                expected = status == PENDING and lease == token
            else:
                expected = status in OPEN_STATUSES
            if not expected:
                return Outcome.SKIPPED, 0
            attempt = int(retry_count) + 1
            dead = attempt >= int(max_retry)
            values: dict[str, Any] = {
                "status": DEAD if dead else PENDING,
                "next_retry_at": None if dead else db_now + as_delay(backoff(attempt)),
                "retry_count": attempt,
                "last_error": truncate_error(reason),
                "lease_token": None,
                "updated_at": db_now,
            }
            conn.execute(sa.update(table).where(table.c.id == outbox_id).values(**values))
            return (Outcome.DEAD if dead else Outcome.RETRY), attempt

        outcome, attempt = self._transact("scheduling a retry", route, retry)
        if outcome is not Outcome.SKIPPED:
            logger.debug("row %s of %s: retry %d -> %s", outbox_id, route.table, attempt, outcome)
        return outcome

    def republish_stale(self, route: Route, *, older_than: float, limit: int) -> int:
        if limit <= 0:
            return 0
        table = self.table(route)

        rescued: list[tuple[int, str | None]] = []

        def rescue(conn: Connection) -> int:
            rescued.clear()
            now = self._now(conn)
            # The wait doubles with each attempt already made (rescue_wait); the plain
            # bound on the shortest wait keeps the (status, published_at) range usable.
            cutoffs = [
                sa.literal(now - as_delay(rescue_wait(older_than, n)), table.c.published_at.type)
                for n in range(RESCUE_DOUBLINGS + 1)
            ]
            due = table.c.published_at <= sa.case(
                *((table.c.retry_count <= n, cutoffs[n]) for n in range(RESCUE_DOUBLINGS)),
                else_=cutoffs[RESCUE_DOUBLINGS],
            )
            shortest = now - as_delay(older_than)
            rescued.extend(
                (int(r[0]), r[1])
                for r in conn.execute(
                    self._lock(
                        sa.select(table.c.id, table.c.event_id)
                        .where(table.c.status == PUBLISHED, table.c.published_at <= shortest, due)
                        .order_by(table.c.published_at, table.c.id)
                        .limit(limit),
                        skip_locked=True,
                    )
                )
            )
            ids = [row_id for row_id, _ in rescued]
            if not ids:
                return 0
            exhausted = table.c.retry_count + 1 >= table.c.max_retry
            # retry_count is assigned last: MySQL evaluates SET left to right with the new
            # values, PostgreSQL and SQLite with the old ones; this order agrees on both.
            stmt = (
                sa.update(table)
                .where(table.c.id.in_(ids), table.c.status == PUBLISHED)
                .ordered_values(
                    (table.c.status, sa.case((exhausted, DEAD), else_=PENDING)),
                    (table.c.next_retry_at, sa.case((exhausted, None), else_=now)),
                    (
                        table.c.last_error,
                        f"published over {older_than:g}s ago with no outcome recorded",
                    ),
                    (table.c.lease_token, None),
                    (table.c.updated_at, now),
                    (table.c.retry_count, table.c.retry_count + 1),
                )
            )
            return int(conn.execute(stmt).rowcount)

        count = self._transact("republishing stale rows", route, rescue)
        if count:
            # Name the rows, so an operator can follow them (and see whether the same ones
            # come back): outbox id and event id, the first few of a large sweep.
            shown = ", ".join(f"{row_id} ({event_id or '-'})" for row_id, event_id in rescued[:20])
            more = f" and {len(rescued) - 20} more" if len(rescued) > 20 else ""
            logger.warning(
                "%d rows of %s were published over %gs ago with no outcome recorded; sent "
                "back to pending (waiting twice as long after each attempt, dead when out of "
                "retries): outbox ids (event ids) %s%s",
                count,
                route.table,
                older_than,
                shown,
                more,
                extra={"outbox_ids": [row_id for row_id, _ in rescued]},
            )
        return count

    @property
    def notifies_new_rows(self) -> bool:
        return self.dialect.notify is not None

    def new_row_listener(self) -> NewRowListener | None:
        """A ``LISTEN`` connection on PostgreSQL (see :mod:`.listening`); ``None`` elsewhere."""
        if self.dialect.notify is None:
            return None
        self._check_server()
        from outboxkit.backends.sql.listening import PostgresListener

        return PostgresListener(self.engine)
