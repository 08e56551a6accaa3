"""The SQL repository: every statement written once with SQLAlchemy Core.

Whatever differs between PostgreSQL, MySQL/MariaDB and SQLite comes from the
:class:`~outboxkit.backends.dialect.Dialect` value picked for the engine; the remaining
capability questions SQLAlchemy already answers (``UPDATE ... RETURNING``) are asked of the
engine's dialect. The contract is :class:`outboxkit.repository.Repository`; the notes below
are how it is met.

* **Clock.** Every "now" is the dialect's SQL expression, evaluated by the server. When a
  later time is needed (a lease, a retry), the server's now is read in the same transaction
  (usually as a column of the locking ``SELECT``) and the delay added in Python, so no
  interval arithmetic differs by dialect and the app clock is never used.
* **Claims** are one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` of the due rows,
  then one ``UPDATE ... WHERE id IN`` giving them a fresh lease token.
* **Guarded updates** name the expected state in their ``WHERE`` clause; when a batch's
  changed ids are needed they come from ``RETURNING`` or, without it (MySQL), from a
  ``SELECT ... FOR UPDATE`` of the matching rows in the same transaction followed by the
  ``UPDATE`` of exactly those, so the answer is right under concurrency.
* **Errors.** Driver errors become :class:`~outboxkit.errors.RepositoryError` (schema
  errors :class:`~outboxkit.errors.SchemaError`) with the cause chained; only the callback
  of :meth:`SqlRepository.consume` may raise through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.backends.dialect import Dialect, dialect_for
from outboxkit.backends.schema import build_table, table_ddl
from outboxkit.errors import RepositoryError, SchemaError
from outboxkit.messages import OutboxMessage, Status
from outboxkit.repository import (
    AddResult,
    Claim,
    ConsumeOutcome,
    ConsumeResult,
    NewMessage,
    Repository,
    RetryOutcome,
    truncate_error,
)
from outboxkit.routing import Route

logger = logging.getLogger(__name__)

T = TypeVar("T")

PENDING = Status.PENDING.value
PUBLISHED = Status.PUBLISHED.value
CONSUMED = Status.CONSUMED.value
DEAD = Status.DEAD.value
#: Statuses a consumer may still act on (``consumed`` and ``dead`` are final).
_OPEN = (PENDING, PUBLISHED)
#: Longest delay accepted from a backoff function; beyond it the datetime would overflow.
_MAX_DELAY = timedelta(days=3650)


def _delay(seconds: float) -> timedelta:
    """``seconds`` as a timedelta: 0 when not positive (or NaN), capped at :data:`_MAX_DELAY`."""
    if not seconds > 0:
        return timedelta(0)
    if seconds >= _MAX_DELAY.total_seconds():
        return _MAX_DELAY
    return timedelta(seconds=seconds)


def _message(row: RowMapping, **overrides: Any) -> OutboxMessage:
    """The row as a value; ``overrides`` replace columns (cheaper than ``attrs.evolve``)."""
    values: dict[str, Any] = dict(
        id=int(row["id"]),
        event_id=row["event_id"],
        event_type=row["biz_type"],
        service_name=row["service_name"],
        topic=row["topic"],
        message_key=row["message_key"],
        payload=row["payload"],
        status=Status(row["status"]),
        retry_count=int(row["retry_count"]),
        max_retry=int(row["max_retry"]),
        next_retry_at=row["next_retry_at"],
        last_error=row["last_error"],
        published_at=row["published_at"],
        consumed_at=row["consumed_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        lease_token=row["lease_token"],
    )
    values.update(overrides)
    return OutboxMessage(**values)


class SqlRepository(Repository):
    """:class:`~outboxkit.repository.Repository` on PostgreSQL 9.5+, MySQL 8.0.1+ /
    MariaDB 10.6+ or SQLite 3.35+ (one relay at a time), through a SQLAlchemy engine.

    Thread-safe: it holds the engine (a pool), never a connection. The server version is
    checked on first use and an unsupported server raises
    :class:`~outboxkit.errors.UnsupportedDatabaseError`. ``owns_engine=True`` makes
    :meth:`close` dispose the engine; an engine passed in by the application is left alone.
    """

    def __init__(self, engine: sa.Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self.dialect: Dialect = dialect_for(engine)
        # The engine our own transactions use: same pool, dialect's isolation level.
        level = self.dialect.own_isolation_level
        self._own: sa.Engine = engine.execution_options(isolation_level=level) if level else engine
        self._owns_engine = owns_engine
        self._metadata = sa.MetaData()
        self._tables: dict[str, sa.Table] = {}
        self._tables_lock = threading.Lock()
        self._version_lock = threading.Lock()
        self._server_version: str | None = None

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> SqlRepository:
        """A repository on a new engine for ``url``, disposed by :meth:`close`.

        SQLite URLs get :func:`~outboxkit.backends.sqlite.create_sqlite_engine`; others
        :func:`sqlalchemy.create_engine` with ``pool_pre_ping`` on unless given.
        """
        if url.startswith("sqlite"):
            from outboxkit.backends.sqlite import create_sqlite_engine

            engine = create_sqlite_engine(url, **engine_kwargs)
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
            engine = sa.create_engine(url, **engine_kwargs)
        return cls(engine, owns_engine=True)

    # ------------------------------------------------------------------ plumbing

    def table(self, route: Route | str) -> sa.Table:
        """The (cached) Core table of ``route``, for queries of your own."""
        name = route if isinstance(route, str) else route.table
        with self._tables_lock:
            table = self._tables.get(name)
            if table is None:
                table = build_table(name, self._metadata, self.dialect)
                self._tables[name] = table
            return table

    @property
    def server_version(self) -> str:
        """The checked server version, e.g. ``"MariaDB 10.11.19"`` (connects if needed)."""
        self._check_server()
        assert self._server_version is not None
        return self._server_version

    def _is_checked(self) -> bool:
        return self._server_version is not None

    def _check_server(self) -> None:
        if self._server_version is not None:
            return
        with self._version_lock:
            if self._is_checked():  # another thread checked while we waited
                return
            try:
                with self.engine.connect() as conn:
                    text = conn.exec_driver_sql(self.dialect.version_query).scalar()
            except SQLAlchemyError as exc:
                raise RepositoryError(
                    f"cannot read the {self.dialect.name} server version: {exc}"
                ) from exc
            self._server_version = self.dialect.check_version(str(text))
            logger.info("outbox repository on %s", self._server_version)

    @contextlib.contextmanager
    def _begin(self, what: str, route: Route | None = None) -> Iterator[Connection]:
        """A short transaction of our own; driver errors become :class:`RepositoryError`."""
        self._check_server()
        try:
            with self._own.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            where = f" on table {route.table!r}" if route is not None else ""
            raise RepositoryError(f"{what}{where} failed: {exc}") from exc

    def _now(self, conn: Connection) -> datetime:
        value: datetime = conn.execute(sa.select(self.dialect.now())).scalar_one()
        return value

    def _lock(self, select: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
        """Add the row-locking clause (rendered as nothing on SQLite, where BEGIN IMMEDIATE
        already holds the database's single write lock)."""
        return select.with_for_update(skip_locked=skip_locked and self.dialect.supports_skip_locked)

    def _guarded_update(
        self,
        conn: Connection,
        table: sa.Table,
        condition: ColumnElement[bool],
        values: Mapping[str, Any],
    ) -> set[int]:
        """``UPDATE table SET values WHERE condition`` and the ids it changed."""
        if self.engine.dialect.update_returning:
            stmt = sa.update(table).where(condition).values(**values).returning(table.c.id)
            return {int(r[0]) for r in conn.execute(stmt)}
        locked = [
            int(r[0]) for r in conn.execute(self._lock(sa.select(table.c.id).where(condition)))
        ]
        if locked:
            conn.execute(sa.update(table).where(table.c.id.in_(locked), condition).values(**values))
        return set(locked)

    # ------------------------------------------------------------------ schema

    def create_schema(self, routes: Iterable[Route]) -> None:
        """Create missing tables; on an existing table (e.g. one the Go system created) add
        the missing ``event_id``/``lease_token`` columns and any missing index."""
        tables = [self.table(r) for r in routes]
        self._check_server()
        try:
            with self.engine.begin() as conn:
                for table in tables:
                    self._create_or_upgrade(conn, table)
        except SQLAlchemyError as exc:
            names = ", ".join(t.name for t in tables)
            raise SchemaError(f"creating the outbox tables {names} failed: {exc}") from exc

    def _create_or_upgrade(self, conn: Connection, table: sa.Table) -> None:
        inspector = sa.inspect(conn)
        if not inspector.has_table(table.name):
            table.create(conn, checkfirst=True)
            logger.info("created outbox table %s", table.name)
            return
        present = {c["name"] for c in inspector.get_columns(table.name)}
        preparer = conn.dialect.identifier_preparer
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise SchemaError(
                    f"table {table.name!r} exists without the required column {column.name!r}"
                )
            col_type = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(
                f"ALTER TABLE {preparer.format_table(table)} "
                f"ADD COLUMN {preparer.format_column(column)} {col_type} NULL"
            )
            logger.info("added column %s to outbox table %s", column.name, table.name)
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
                logger.info("created index %s on outbox table %s", index.name, table.name)

    def schema_ddl(self, routes: Iterable[Route]) -> str:
        return table_ddl([self.table(r) for r in routes], self.engine.dialect)

    # ------------------------------------------------------------------ transactions

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
            raise RepositoryError(f"cannot begin a transaction: {exc}") from exc
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
                raise RepositoryError(f"commit failed: {exc}") from exc
        finally:
            conn.close()

    # ------------------------------------------------------------------ writing

    def add(
        self, connection: Connection, route: Route, messages: Sequence[NewMessage]
    ) -> list[AddResult]:
        if not messages:
            return []
        table = self.table(route)
        self._check_server()
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
            if self.dialect.insert_returning:
                created, existing = self._add_returning(connection, table, rows)
            else:
                created, existing = self._add_then_read(connection, table, rows)
        except SQLAlchemyError as exc:
            raise RepositoryError(
                f"inserting {len(rows)} outbox rows into {route.table!r} failed: {exc}"
            ) from exc
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
            results.append(AddResult(outbox_id=outbox_id, event_id=event_id, created=is_new))
        return results

    def _add_returning(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """One multi-row insert whose RETURNING names exactly the rows it inserted."""
        now = self.dialect.now()
        stmt = (
            self.dialect.insert_ignore(table)
            .values(next_retry_at=now, created_at=now, updated_at=now)
            .returning(table.c.id, table.c.event_id)
        )
        created = {str(r[1]): int(r[0]) for r in conn.execute(stmt, rows)}
        missing = [r["event_id"] for r in rows if r["event_id"] not in created]
        existing = self._ids_by_event_id(conn, table, missing, lock=False) if missing else {}
        return created, existing

    def _add_then_read(
        self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> tuple[dict[str, int], dict[str, int]]:
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
                sa.select(now_expr.label("now"), null.label("id"), null.label("event_id")),
                sa.select(now_expr, table.c.id, table.c.event_id).where(
                    table.c.event_id.in_(event_ids)
                ),
            )
        ).all()
        now = before[0][0]
        known = {str(r[2]) for r in before if r[2] is not None}
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
        return created, existing

    def _ids_by_event_id(
        self, conn: Connection, table: sa.Table, event_ids: Sequence[str], *, lock: bool
    ) -> dict[str, int]:
        query = sa.select(table.c.id, table.c.event_id).where(table.c.event_id.in_(event_ids))
        if lock:
            query = query.with_for_update(read=True)
        return {str(r[1]): int(r[0]) for r in conn.execute(query)}

    # ------------------------------------------------------------------ relay side

    def claim_due(self, route: Route, *, limit: int, lease_seconds: float) -> Claim:
        token = str(uuid.uuid4())
        if limit <= 0:
            return Claim(token=token, messages=[])
        table = self.table(route)
        with self._begin("claiming due rows", route) as conn:
            now = self.dialect.now()
            query = (
                sa.select(*table.c, now.label("db_now"))
                .where(table.c.status == PENDING, table.c.next_retry_at <= now)
                .order_by(table.c.next_retry_at, table.c.id)
                .limit(limit)
            )
            rows = conn.execute(self._lock(query, skip_locked=True)).mappings().all()
            if not rows:
                return Claim(token=token, messages=[])
            db_now: datetime = rows[0]["db_now"]
            lease_until = db_now + _delay(lease_seconds)
            ids = [int(r["id"]) for r in rows]
            conn.execute(
                sa.update(table)
                .where(table.c.id.in_(ids))
                .values(lease_token=token, next_retry_at=lease_until, updated_at=db_now)
            )
        messages = [
            _message(r, lease_token=token, next_retry_at=lease_until, updated_at=db_now)
            for r in rows
        ]
        logger.debug("claimed %d rows of %s under lease %s", len(messages), route.table, token)
        return Claim(token=token, messages=messages)

    def mark_published(self, route: Route, ids: Sequence[int], *, token: str) -> set[int]:
        if not ids:
            return set()
        table = self.table(route)
        with self._begin("marking rows published", route) as conn:
            now = self.dialect.now()
            return self._guarded_update(
                conn,
                table,
                sa.and_(
                    table.c.id.in_(list(ids)),
                    table.c.status == PENDING,
                    table.c.lease_token == token,
                ),
                {
                    "status": PUBLISHED,
                    "published_at": now,
                    "next_retry_at": None,
                    "last_error": None,
                    "lease_token": None,
                    "updated_at": now,
                },
            )

    def release(self, route: Route, ids: Sequence[int], *, token: str, delay: float) -> set[int]:
        if not ids:
            return set()
        table = self.table(route)
        with self._begin("releasing claimed rows", route) as conn:
            now = self._now(conn)
            return self._guarded_update(
                conn,
                table,
                sa.and_(
                    table.c.id.in_(list(ids)),
                    table.c.status == PENDING,
                    table.c.lease_token == token,
                ),
                {"next_retry_at": now + _delay(delay), "lease_token": None, "updated_at": now},
            )

    def schedule_retry(
        self,
        route: Route,
        outbox_id: int,
        *,
        reason: str,
        backoff: Callable[[int], float],
        token: str | None = None,
    ) -> RetryOutcome:
        table = self.table(route)
        with self._begin("scheduling a retry", route) as conn:
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
                return RetryOutcome.SKIPPED
            status, retry_count, max_retry, lease, db_now = row
            if token is not None:
                expected = status == PENDING and lease == token
            else:
                expected = status in _OPEN
            if not expected:
                return RetryOutcome.SKIPPED
            attempt = int(retry_count) + 1
            dead = attempt >= int(max_retry)
            values: dict[str, Any] = {
                "status": DEAD if dead else PENDING,
                "next_retry_at": None if dead else db_now + _delay(backoff(attempt)),
                "retry_count": attempt,
                "last_error": truncate_error(reason),
                "lease_token": None,
                "updated_at": db_now,
            }
            conn.execute(sa.update(table).where(table.c.id == outbox_id).values(**values))
        outcome = RetryOutcome.DEAD if dead else RetryOutcome.SCHEDULED
        logger.debug("row %s of %s: retry %d -> %s", outbox_id, route.table, attempt, outcome)
        return outcome

    def republish_stale(self, route: Route, *, older_than: float, limit: int) -> int:
        if limit <= 0:
            return 0
        table = self.table(route)
        with self._begin("republishing stale rows", route) as conn:
            now = self._now(conn)
            cutoff = now - _delay(older_than)
            ids = [
                int(r[0])
                for r in conn.execute(
                    self._lock(
                        sa.select(table.c.id)
                        .where(table.c.status == PUBLISHED, table.c.published_at <= cutoff)
                        .order_by(table.c.published_at, table.c.id)
                        .limit(limit),
                        skip_locked=True,
                    )
                )
            ]
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
            count = int(conn.execute(stmt).rowcount)
        if count:
            logger.warning("sent %d stale published rows of %s back", count, route.table)
        return count

    # ------------------------------------------------------------------ consumer side

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
            if status is None or status not in _OPEN:
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
        return None if row is None else _message(row)

    def get_by_event_id(self, route: Route, event_id: str) -> OutboxMessage | None:
        table = self.table(route)
        with self._begin("reading a row", route) as conn:
            row = (
                conn.execute(sa.select(table).where(table.c.event_id == event_id))
                .mappings()
                .first()
            )
        return None if row is None else _message(row)

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
            return [_message(row) for row in conn.execute(query).mappings()]

    def mark_consumed(self, route: Route, outbox_id: int) -> bool:
        table = self.table(route)
        with self._begin("marking a row consumed", route) as conn:
            now = self.dialect.now()
            result = conn.execute(
                sa.update(table)
                .where(table.c.id == outbox_id, table.c.status.in_(_OPEN))
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
                .where(table.c.id == outbox_id, table.c.status.in_(_OPEN))
                .values(
                    status=DEAD,
                    last_error=truncate_error(reason),
                    next_retry_at=None,
                    lease_token=None,
                    updated_at=self.dialect.now(),
                )
            )
            return bool(result.rowcount)

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

    def now(self) -> datetime:
        with self._begin("reading the database clock") as conn:
            return self._now(conn)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts.update(self.dialect.describe())
        facts["server_version"] = self._server_version
        facts["url"] = self.engine.url.render_as_string(hide_password=True)
        return facts
