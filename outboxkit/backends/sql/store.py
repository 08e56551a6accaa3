"""The plumbing every SQL statement of the repository shares: engine, dialect, tables, clock.

See :mod:`outboxkit.backends.sql` for how the contract is met.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.backends.dialect import Dialect
from outboxkit.backends.dialects import dialect_for
from outboxkit.backends.schema import build_table
from outboxkit.errors import DatabaseSetupError, RepositoryError, SchemaError
from outboxkit.messages import OutboxMessage, Status
from outboxkit.observability.logs import scrub_error
from outboxkit.routing import Route

logger = logging.getLogger(__name__)

T = TypeVar("T")

PENDING = Status.PENDING.value
PUBLISHED = Status.PUBLISHED.value
CONSUMED = Status.CONSUMED.value
DEAD = Status.DEAD.value
#: Statuses a consumer may still act on (``consumed`` and ``dead`` are final).
OPEN_STATUSES = (PENDING, PUBLISHED)
#: Statuses no consumer or relay changes again.
FINAL_STATUSES = (CONSUMED, DEAD)
#: Attempts of one of our transactions that failed transiently (deadlock, serialization
#: failure, a pooled connection found dead) before the failure is reported.
TRANSACTION_ATTEMPTS = 3
#: Longest delay accepted from a backoff function; beyond it the datetime would overflow.
_MAX_DELAY = timedelta(days=3650)


def as_delay(seconds: float) -> timedelta:
    """``seconds`` as a timedelta: 0 when not positive (or NaN), capped at :data:`_MAX_DELAY`."""
    if not seconds > 0:
        return timedelta(0)
    if seconds >= _MAX_DELAY.total_seconds():
        return _MAX_DELAY
    return timedelta(seconds=seconds)


def _first_line(exc: BaseException) -> str:
    """The driver's message without PostgreSQL's DETAIL lines (which can quote values)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


#: Columns a claim knows without reading them: it chose ``pending`` rows and set the rest.
CLAIM_KNOWN_COLUMNS = ("status", "next_retry_at", "updated_at", "lease_token")


def row_message(row: RowMapping, **overrides: Any) -> OutboxMessage:
    """The row as a value; ``overrides`` replace the columns a claim sets
    (:data:`CLAIM_KNOWN_COLUMNS`), which then need not have been selected."""
    unknown = set(overrides).difference(CLAIM_KNOWN_COLUMNS)
    if unknown:
        raise TypeError(f"row_message cannot override {sorted(unknown)}")

    def column(name: str) -> Any:
        return overrides[name] if name in overrides else row[name]

    return OutboxMessage(
        id=int(row["id"]),
        event_id=row["event_id"],
        event_type=row["biz_type"],
        service_name=row["service_name"],
        topic=row["topic"],
        message_key=row["message_key"],
        payload=row["payload"],
        status=overrides["status"] if "status" in overrides else Status(row["status"]),
        retry_count=int(row["retry_count"]),
        max_retry=int(row["max_retry"]),
        next_retry_at=column("next_retry_at"),
        last_error=row["last_error"],
        published_at=row["published_at"],
        consumed_at=row["consumed_at"],
        created_at=row["created_at"],
        updated_at=column("updated_at"),
        lease_token=column("lease_token"),
    )


def _pool_copy(engine: sa.Engine, isolation_level: str) -> sa.Engine:
    """An engine on a copy of ``engine``'s pool (same connect function, arguments, sizes and
    pool listeners) whose connections are set to ``isolation_level`` once, when they
    connect, with ``engine``'s execution options (a ``schema_translate_map`` must reach the
    claims too) except its isolation level. Its connections are closed when it is disposed
    or, for a repository nobody closed, when the repository is garbage-collected."""
    options = {k: v for k, v in engine.get_execution_options().items() if k != "isolation_level"}
    copy = sa.create_engine(
        engine.url,
        pool=engine.pool.recreate(),
        isolation_level=isolation_level,
        hide_parameters=True,
    )
    return copy.execution_options(**options) if options else copy


class SqlStore:
    """The engine, its dialect, the table cache and the helpers every statement uses.

    The concern modules of this package extend it; :class:`SqlRepository` combines them.
    """

    def __init__(self, engine: sa.Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self.dialect: Dialect = dialect_for(engine)
        # The engine our own transactions use. Where they need another isolation level than
        # the application's (MySQL/MariaDB), it gets a pool of its own, a copy of the
        # application's (same connect function, arguments and listeners) whose connections
        # are set to that level once, when they connect: setting it per checkout cost a
        # SET SESSION round trip on every checkout and another on every return.
        level = self.dialect.own_isolation_level
        self._own: sa.Engine = engine
        if level:
            self._own = _pool_copy(engine, level)
        #: One-statement claims and marks run here, outside a transaction, where the
        #: dialect allows it (``Dialect.single_statement_autocommit``). A pool of its own
        #: whose connections are put in autocommit once, when they connect: switched per
        #: checkout (``execution_options``), psycopg2 sent a ``SET`` on every checkin to
        #: switch back, and when the server had killed the connection meanwhile that
        #: checkin raised and leaked the pool slot (the fault suite's db-terminate
        #: scenario exhausted a worker's pool in minutes).
        self._autocommit: sa.Engine | None = None
        if self.dialect.single_statement_autocommit:
            self._autocommit = _pool_copy(engine, "AUTOCOMMIT")
        for own_pool in (self._own, self._autocommit):
            if own_pool is not None and own_pool is not engine:
                weakref.finalize(self, own_pool.dispose)
        self._owns_engine = owns_engine
        self._metadata = sa.MetaData()
        self._tables: dict[str, sa.Table] = {}
        #: Statements built once per table and reused (they are immutable): building one
        #: costs more Python than the publish's own round trip on a fast database.
        self._statements: dict[tuple[str, str], Any] = {}
        self._tables_lock = threading.Lock()
        self._version_lock = threading.Lock()
        self._server_version: str | None = None

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

    def _error(
        self, text: str, exc: SQLAlchemyError, cls: type[RepositoryError] = RepositoryError
    ) -> RepositoryError:
        """The error to raise for driver error ``exc``: ``"<text>: <exc>"``, parameters hidden.

        A failure that only configuration can cure (``Dialect.is_fatal``: refused password,
        unknown database, missing table, missing privilege) becomes
        :class:`DatabaseSetupError`, which stops the engine instead of being retried.
        """
        scrub_error(exc)
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        if orig is not None and self.dialect.is_fatal(orig):
            return DatabaseSetupError(f"{text}: {_first_line(orig)}")
        return cls(f"{text}: {exc}")

    @property
    def server_version(self) -> str:
        """The checked server version, e.g. ``"MariaDB 10.11.19"`` (connects if needed)."""
        self._check_server()
        assert self._server_version is not None
        return self._server_version

    @property
    def safe_url(self) -> str:
        """The engine's URL with the password masked, for logs and errors."""
        return self.engine.url.render_as_string(hide_password=True)

    def _is_checked(self) -> bool:
        return self._server_version is not None

    def _check_server(self, connection: Connection | None = None) -> None:
        """Read and check the server version once; on ``connection`` when given.

        :meth:`add` passes the caller's connection: on SQLite a second connection would wait
        for the write lock the caller's own transaction holds (tables made by Alembic or
        ``create_all`` leave the first check to the first publish).
        """
        if self._server_version is not None:
            return
        with self._version_lock:
            if self._is_checked():  # another thread checked while we waited
                return
            try:
                if connection is not None:
                    text = connection.exec_driver_sql(self.dialect.version_query).scalar()
                else:
                    with self.engine.connect() as conn:
                        text = conn.exec_driver_sql(self.dialect.version_query).scalar()
            except SQLAlchemyError as exc:
                raise self._error(
                    f"cannot connect to {self.dialect.name} at {self.safe_url}", exc
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
            raise self._driver_error(what, route, exc) from exc

    def _driver_error(
        self, what: str, route: Route | None, exc: SQLAlchemyError
    ) -> RepositoryError:
        """The error to raise for a driver error: one that says to run ``outboxkit migrate``
        when the route's table does not exist (a fatal :class:`DatabaseSetupError`) or lacks
        a column (an unmigrated Go table: :class:`SchemaError`), else a
        :class:`RepositoryError` with the driver's message.

        The driver's words alone ("relation ... does not exist") leave a new user guessing
        what to do; the table is only blamed when the driver's message names it, so a
        missing table of the application's own is reported as the driver says."""
        where = f" on table {route.table!r}" if route is not None else ""
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        scrub_error(exc)
        if (
            orig is not None
            and route is not None
            and self.dialect.is_missing_table(orig)
            and route.table in str(orig)
        ):
            return DatabaseSetupError(
                f"{what}{where} failed: the table does not exist ({_first_line(orig)}); "
                "create it with `outboxkit migrate APP` (or Engine.create_schema(), or an "
                "Alembic migration: docs/alembic.md)"
            )
        if orig is not None and self.dialect.is_missing_column(orig):
            detail = str(orig).strip().splitlines()[0] if str(orig).strip() else repr(orig)
            return SchemaError(
                f"{what}{where} failed: the table lacks a column outboxkit needs ({detail}). "
                "It was probably created by the Go system or an older outboxkit: run "
                "`outboxkit migrate APP` to add the missing columns and indexes, or apply "
                "the ALTER TABLE statements that `outboxkit migrate APP --print-sql` prints"
            )
        return self._error(f"{what}{where} failed", exc)

    def _is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` only says "run the transaction again" (see ``Dialect.is_transient``):
        a deadlock or serialization failure, or a connection that died (killed by the server,
        a restart, a stale pooled connection)."""
        if not isinstance(exc, DBAPIError):
            return False
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and self.dialect.is_transient(exc.orig)

    def _transact(self, what: str, route: Route | None, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in a short transaction of our own and commit.

        A transient failure (:meth:`_is_transient`) rolls back and runs ``fn`` again on a
        fresh transaction, up to :data:`TRANSACTION_ATTEMPTS` times; other driver errors, and
        transient ones that persist, become :class:`RepositoryError`. Exceptions that are not
        driver errors propagate unchanged after the rollback.
        """
        return self._with_retries(what, route, fn, self._own.begin)

    def _statement(self, what: str, route: Route | None, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` on an autocommit connection where the dialect allows it
        (no BEGIN, no COMMIT round trips), else like :meth:`_transact`.

        Every statement commits on its own, so ``fn`` must make exactly one change (one
        write statement; reads before it, such as the clock, are fine). Retried like
        :meth:`_transact`; as with a transaction whose COMMIT got no answer, a statement
        whose connection died may have committed, so ``fn`` must be safe to run again (a
        lost claim's rows wait out their lease; a mark run again finds its rows moved on).
        ``begin`` event listeners of the application's engine (``SET LOCAL ...``) do not
        run here: there is no BEGIN."""
        if self._autocommit is None:
            return self._transact(what, route, fn)
        return self._with_retries(what, route, fn, self._autocommit.connect)

    def _with_retries(
        self,
        what: str,
        route: Route | None,
        fn: Callable[[Connection], T],
        connect: Callable[[], contextlib.AbstractContextManager[Connection]],
    ) -> T:
        self._check_server()
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                with connect() as conn:
                    return fn(conn)
            except SQLAlchemyError as exc:
                if attempt < TRANSACTION_ATTEMPTS and self._is_transient(exc):
                    logger.info(
                        "%s%s: transient failure, running it again (attempt %d): %s",
                        what,
                        f" on {route.table!r}" if route is not None else "",
                        attempt + 1,
                        type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__,
                    )
                    continue
                raise self._driver_error(what, route, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _now(self, conn: Connection) -> datetime:
        value: datetime = conn.execute(sa.select(self.dialect.now())).scalar_one()
        return value

    def _lock(self, select: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
        """Add the row-locking clause (rendered as nothing on SQLite, where BEGIN IMMEDIATE
        already holds the database's single write lock)."""
        return select.with_for_update(skip_locked=skip_locked and self.dialect.supports_skip_locked)

    def _guarded_update(
        self,
        what: str,
        route: Route,
        ids: Sequence[int],
        condition: Callable[[sa.Table], ColumnElement[bool]],
        values: Callable[[Connection], Mapping[str, Any]],
    ) -> set[int]:
        """``UPDATE table SET values WHERE id IN ids AND condition`` and the ids it changed.

        With ``RETURNING`` that is one statement. Without it (MySQL/MariaDB) the rows are
        locked first with a ``SELECT ... FOR UPDATE`` by primary key, in id order, and the
        ``UPDATE`` names exactly those that match. (The affected-row count cannot stand in
        for the ids: an ``UPDATE`` that waited on a row lock through a secondary index was
        seen to count a row that no longer matched.) Rows are locked by primary key in id
        order in every case, the order the consumer locks them in too, which is what keeps
        a relay's mark and a consumer's batch from deadlocking.
        """
        table = self.table(route)
        wanted = sorted(set(ids))
        if not wanted:
            return set()
        if self.engine.dialect.update_returning:
            # The subquery locks the rows by primary key in id order before the UPDATE
            # touches any (a locking subquery is never flattened into a join): the plain
            # UPDATE locked them in the order its plan met them, and deadlocked with a
            # consumer's batch about once a second at 500 events/s (PostgreSQL broke each
            # after its deadlock_timeout, 1 s, stalling both).
            in_id_order = self._lock(
                sa.select(table.c.id).where(table.c.id.in_(wanted)).order_by(table.c.id)
            )

            def returning(conn: Connection) -> set[int]:
                stmt = (
                    sa.update(table)
                    .where(table.c.id.in_(in_id_order.scalar_subquery()), condition(table))
                    .values(**values(conn))
                    .returning(table.c.id)
                )
                return {int(r[0]) for r in conn.execute(stmt)}

            return self._statement(what, route, returning)

        def locked(conn: Connection) -> set[int]:
            # Lock every named row by primary key (not through the status index), then pick.
            rows = conn.execute(
                self._lock(
                    sa.select(table.c.id, sa.case((condition(table), 1), else_=0))
                    .where(table.c.id.in_(wanted))
                    .order_by(table.c.id)
                )
            )
            matching = [int(r[0]) for r in rows if r[1]]
            if matching:
                conn.execute(
                    sa.update(table)
                    .where(table.c.id.in_(matching), condition(table))
                    .values(**values(conn))
                )
            return set(matching)

        return self._transact(what, route, locked)

    # ------------------------------------------------------------------ schema

    def now(self) -> datetime:
        with self._begin("reading the database clock") as conn:
            return self._now(conn)

    def close(self) -> None:
        if self._own is not self.engine:
            self._own.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()
        if self._owns_engine:
            self.engine.dispose()
