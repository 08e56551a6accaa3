"""The consumer's statements: consume a batch in one transaction, reads, final marks.

**Identity.** A message names its row by ``outbox_id``, but ids are only unique within a
table's life (a rebuilt table reuses them, a Go relay or a stray producer may share the
topic), so a row is acted on only when it *is* the message's event: same event id (for a Go
row without ``event_id``, the shell's event id, else the row id) and same type. Anything else
is ``MISMATCH`` and the row is left untouched.

**Batches.** :meth:`SqlConsumeStore.consume_batch` locks the batch's rows in one statement, in id
order (the order a relay's mark locks them in, so the two never deadlock), runs each handler,
marks every successful row in one statement and commits once. The first pass runs the
handlers without savepoints (two round trips saved per event); if one raises, that pass is
rolled back and the batch is replayed with a savepoint around each handler, the failed one
not run again, so one failure rolls back only its own writes. A replay can only call a
handler again, never commit its writes twice.

**Mark first, where the database allows it** (``Dialect.update_returning_old``,
PostgreSQL). The first pass locks the batch's rows in id order, marks the open ones
``consumed`` and returns what the identity check needs together with the values they had,
all in one ``UPDATE``, and then runs the handlers: one statement and round trip fewer per
batch. Nobody sees the early mark (one transaction); a row it marked that no handler
consumed (a message that is not the row's event, a batch stopped midway) gets its old values
back before the commit. A failing handler rolls the pass back, as in the general pass. One
difference a handler can see: reading its own outbox row on the connection, it finds the row
``consumed`` already.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from outboxkit.backends.sql.handler_passes import run_handler, run_in_passes
from outboxkit.backends.sql.store import (
    CONSUMED,
    DEAD,
    FINAL_STATUSES,
    OPEN_STATUSES,
    PUBLISHED,
    SqlStore,
    row_message,
)
from outboxkit.messages import OutboxMessage, Outcome
from outboxkit.routing import Route
from outboxkit.store import ConsumeItem, ConsumeResult, ConsumeStore, truncate_error
from outboxkit.wire.envelope import row_event_id

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_same_event(row: Any, event_id: str | None, event_type: str | None) -> bool:
    """Whether the locked ``(id, status, event_id, biz_type, payload-if-no-event-id)`` row is
    the event a message claims to be (``None`` means "not checked")."""
    if event_type is not None and row[3] != event_type:
        return False
    if event_id is None:
        return True
    return row_event_id(int(row[0]), row[2], row[4]) == event_id


#: The columns a consume mark changes (SqlConsumeStore._consumed_values): what the mark-first
#: pass puts back on a row it marked but no handler consumed.
_MARK_CHANGES = (
    "status",
    "consumed_at",
    "last_error",
    "next_retry_at",
    "lease_token",
    "updated_at",
)


class SqlConsumeStore(SqlStore, ConsumeStore):
    """The consumer's statements: consume a batch in one transaction, reads, final marks."""

    def _lock_rows(self, conn: Connection, table: sa.Table, ids: Sequence[int]) -> dict[int, Any]:
        """Lock ``ids`` by primary key in id order; ``id -> (id, status, event_id, type,
        payload only when event_id is NULL)``."""
        query = (
            sa.select(
                table.c.id,
                table.c.status,
                table.c.event_id,
                table.c.biz_type,
                sa.case((table.c.event_id.is_(None), table.c.payload), else_=sa.null()),
            )
            .where(table.c.id.in_(sorted(set(ids))))
            .order_by(table.c.id)
        )
        return {int(row[0]): row for row in conn.execute(self._lock(query))}

    def _consumed_values(self) -> dict[str, Any]:
        now = self.dialect.now()
        return {
            "status": CONSUMED,
            "consumed_at": now,
            "last_error": None,
            "next_retry_at": None,
            "lease_token": None,
            "updated_at": now,
        }

    def consume_batch(
        self,
        route: Route,
        items: Sequence[ConsumeItem],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[ConsumeResult[Any]]:
        if not items:
            return []
        table = self.table(route)
        what = f"consuming {len(items)} rows of {route.table!r}"
        failed: dict[int, Exception] = {}

        def one_pass(conn: Connection, savepoints: bool) -> list[ConsumeResult[Any]]:
            rows = self._lock_rows(conn, table, [item.outbox_id for item in items])
            results: list[ConsumeResult[Any]] = []
            consumed: list[int] = []
            stopped = False
            for index, item in enumerate(items):
                row = rows.get(item.outbox_id)
                if not stopped and should_stop is not None and should_stop():
                    stopped = True
                if stopped:
                    results.append(ConsumeResult(Outcome.NOT_RUN))
                elif row is None:
                    results.append(ConsumeResult(Outcome.MISSING))
                elif not is_same_event(row, item.event_id, item.event_type):
                    results.append(ConsumeResult(Outcome.MISMATCH))
                elif row[1] not in OPEN_STATUSES or item.outbox_id in consumed:
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
                        consumed.append(item.outbox_id)
            if consumed:
                conn.execute(
                    sa.update(table)
                    .where(table.c.id.in_(consumed))
                    .values(**self._consumed_values())
                )
            return results

        def run_pass(savepoints: bool) -> list[ConsumeResult[Any]]:
            if savepoints or not self.dialect.update_returning_old:
                return self._transact(
                    what, route, functools.partial(one_pass, savepoints=savepoints)
                )
            return self._transact(
                what, route, functools.partial(self._mark_first, table, items, should_stop)
            )

        return run_in_passes(run_pass, failed, len(items))

    def _mark_first_statement(self, table: sa.Table) -> Any:
        """The mark-first ``UPDATE`` for ``table``, built once: the batch's ids are one
        array parameter (``id = ANY(:ids)``), bound in C by the driver, instead of an
        expanded ``IN`` list rendered per batch.

        Every named row is locked, final ones too, in id order: the order the relay's marks
        and the general pass lock in (locking only the open rows first and the final ones
        after was seen to deadlock with a relay's mark). The status test is on the updated
        table, outside the subquery, so it cannot be pushed into it. It names the final
        statuses and the updated table repeats the ids, so the planner reaches both sides
        by primary key: written as "status IN (open)", it was seen to scan the whole open
        backlog through the status index whenever the statistics underestimated it (fresh
        rows), a cost growing with the backlog. (Only the four statuses exist, so "not
        final" is "open".)
        """
        ids = sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger))
        old = (
            self._lock(
                sa.select(table.c.id, *(table.c[name] for name in _MARK_CHANGES))
                .where(table.c.id == sa.func.any(ids))
                .order_by(table.c.id)
            )
        ).subquery("old")
        return (
            sa.update(table)
            .where(
                table.c.id == old.c.id,
                table.c.id == sa.func.any(ids),
                table.c.status.not_in(FINAL_STATUSES),
            )
            .values(**self._consumed_values())
            .returning(
                table.c.id,
                table.c.status,
                table.c.event_id,
                table.c.biz_type,
                sa.case((table.c.event_id.is_(None), table.c.payload), else_=sa.null()),
                *(old.c[name] for name in _MARK_CHANGES),
            )
        )

    def _mark_first(
        self,
        table: sa.Table,
        items: Sequence[ConsumeItem],
        should_stop: Callable[[], bool] | None,
        conn: Connection,
    ) -> list[ConsumeResult[Any]]:
        """The first pass, marking first (see the module docstring). A failing handler
        raises :class:`HandlerFailedError`, as in the general pass."""
        ids = sorted({item.outbox_id for item in items})
        mark = self._statements.get(("mark_first", table.name))
        if mark is None:
            mark = self._statements[("mark_first", table.name)] = self._mark_first_statement(table)
        marked = {int(row[0]): row for row in conn.execute(mark, {"ids": ids})}
        # The mark tests "not final"; a status outside the four (none is written, but the
        # column is free text) was marked too: like the general pass, such a row is not
        # open, so its message is a duplicate and the row gets its old values back.
        # Every returned row ends with the old values, in _MARK_CHANGES order.
        old_at = len(next(iter(marked.values()))) - len(_MARK_CHANGES) if marked else 0
        old_status_at = old_at + _MARK_CHANGES.index("status")
        not_open = {
            row_id for row_id, row in marked.items() if row[old_status_at] not in OPEN_STATUSES
        }
        # The rows not marked are final or missing (and already locked): the identity check
        # still tells a duplicate apart from a message that is not the row's event.
        unmarked = [row_id for row_id in ids if row_id not in marked]
        others = self._lock_rows(conn, table, unmarked) if unmarked else {}
        results: list[ConsumeResult[Any]] = []
        handled: set[int] = set()
        for index, item in enumerate(items):
            if should_stop is not None and should_stop():
                results.extend(ConsumeResult(Outcome.NOT_RUN) for _ in items[index:])
                break
            row = marked.get(item.outbox_id) or others.get(item.outbox_id)
            if row is None:
                results.append(ConsumeResult(Outcome.MISSING))
            elif not is_same_event(row, item.event_id, item.event_type):
                results.append(ConsumeResult(Outcome.MISMATCH))
            elif (
                item.outbox_id not in marked
                or item.outbox_id in handled
                or item.outbox_id in not_open
            ):
                results.append(ConsumeResult(Outcome.DUPLICATE))
            else:
                results.append(
                    run_handler(
                        conn, index, item.run, savepoints=False, is_transient=self._is_transient
                    )
                )
                handled.add(item.outbox_id)
        unconsumed = [row for row_id, row in marked.items() if row_id not in handled]
        if unconsumed:
            conn.execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("row_id"))
                .values({name: sa.bindparam(f"old_{name}") for name in _MARK_CHANGES}),
                [
                    {
                        "row_id": int(row[0]),
                        **{f"old_{n}": row[old_at + i] for i, n in enumerate(_MARK_CHANGES)},
                    }
                    for row in unconsumed
                ],
            )
        return results

    def consume(
        self,
        route: Route,
        outbox_id: int,
        fn: Callable[[Connection], T],
        *,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> ConsumeResult[T]:
        item = ConsumeItem(outbox_id=outbox_id, event_id=event_id, event_type=event_type, run=fn)
        result = self.consume_batch(route, [item])[0]
        if result.outcome is Outcome.FAILED:
            assert result.error is not None
            raise result.error
        return ConsumeResult(result.outcome, result.value)

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

    def _final_mark(
        self,
        what: str,
        route: Route,
        outbox_id: int,
        guard: tuple[str | None, str | None, bool],
        values: Callable[[], dict[str, Any]],
    ) -> bool:
        """An open row -> a final state, only if it is the event ``guard`` names (event id
        and type, ``None`` for "not checked") and, when ``guard`` says published only, has
        been sent."""
        event_id, event_type, published_only = guard
        statuses = (PUBLISHED,) if published_only else OPEN_STATUSES
        table = self.table(route)
        where = sa.and_(table.c.id == outbox_id, table.c.status.in_(statuses))

        def mark(conn: Connection) -> bool:
            # Lock first, then decide: the affected-row count of a guarded UPDATE that waited
            # on a lock is not to be trusted on MySQL (see SqlStore._guarded_update).
            row = self._lock_rows(conn, table, [outbox_id]).get(outbox_id)
            if row is None or row[1] not in statuses:
                return False
            if not is_same_event(row, event_id, event_type):
                return False
            conn.execute(sa.update(table).where(where).values(**values()))
            return True

        return self._transact(what, route, mark)

    def mark_consumed(
        self,
        route: Route,
        outbox_id: int,
        *,
        event_id: str | None = None,
        event_type: str | None = None,
        published_only: bool = False,
    ) -> bool:
        return self._final_mark(
            "marking a row consumed",
            route,
            outbox_id,
            (event_id, event_type, published_only),
            self._consumed_values,
        )

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
        def values() -> dict[str, Any]:
            return {
                "status": DEAD,
                "last_error": truncate_error(reason),
                "next_retry_at": None,
                "lease_token": None,
                "updated_at": self.dialect.now(),
            }

        return self._final_mark(
            "marking a row dead", route, outbox_id, (event_id, event_type, published_only), values
        )
