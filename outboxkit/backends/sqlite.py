"""SQLite (3.35+), for development, tests and single-host deployments.

SQLite has one writer at a time and no row locks, so the outbox runs there with **one relay
at a time**: claims do not run concurrently, they serialize. Every transaction starts with
``BEGIN IMMEDIATE`` (see :func:`create_sqlite_engine`), taking the write lock up front, so a
claim's ``SELECT`` and ``UPDATE`` cannot interleave with another claimer's and two claims
are still disjoint. A second relay is safe but only waits its turn; it adds no throughput.

The clock is the process clock (SQLite is embedded: the "server" is this process).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.backends.dialect import Dialect, require_version

#: ``RETURNING`` (used to tell inserted rows from skipped duplicates) arrived in 3.35.
MINIMUM_VERSION = (3, 35, 0)
#: How long a transaction waits for the write lock before failing with "database is locked".
DEFAULT_BUSY_TIMEOUT = 30.0


def _now() -> ColumnElement[datetime]:
    moment = datetime.now(timezone.utc).replace(tzinfo=None)
    return sa.literal(moment, sa.DateTime())


def _insert_ignore(table: sa.Table) -> Insert:
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[table.c.event_id])


def _check_version(text: str) -> str:
    version = require_version("SQLite", text, MINIMUM_VERSION, why="RETURNING")
    return "SQLite " + ".".join(str(p) for p in version)


def _is_transient(exc: BaseException) -> bool:
    # The busy timeout ran out while another connection held the write lock.
    return "database is locked" in str(exc)


def _is_fatal(exc: BaseException) -> bool:
    # The table was never created, or the file cannot be opened: waiting will not help.
    text = str(exc)
    return "no such table" in text or "unable to open database file" in text


def _is_missing_table(exc: BaseException) -> bool:
    return str(exc).startswith("no such table")


def _is_missing_column(exc: BaseException) -> bool:
    text = str(exc)
    return text.startswith("no such column") or " has no column named " in text


SQLITE = Dialect(
    name="sqlite",
    now=_now,
    insert_ignore=_insert_ignore,
    insert_returning=True,
    supports_skip_locked=False,
    supports_concurrent_claims=False,
    index_names_per_table=False,
    is_transient=_is_transient,
    is_fatal=_is_fatal,
    is_missing_table=_is_missing_table,
    is_missing_column=_is_missing_column,
    version_query="SELECT sqlite_version()",
    check_version=_check_version,
)


def create_sqlite_engine(
    url: str | sa.URL, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, **engine_kwargs: Any
) -> sa.Engine:
    """An engine for ``url`` set up for the outbox: WAL, a busy timeout, ``BEGIN IMMEDIATE``.

    pysqlite starts transactions lazily with a plain ``BEGIN``, which takes the write lock
    only at the first write; two threads that both read first then fail the lock upgrade
    with ``SQLITE_BUSY`` at once, whatever the timeout. Following SQLAlchemy's documented
    pysqlite recipe, the driver's own transaction handling is switched off and every
    transaction begins with ``BEGIN IMMEDIATE``, so concurrent threads of one process wait
    (up to ``busy_timeout`` seconds) instead of failing. The price is that transactions
    serialize: run one relay at a time against SQLite. WAL lets readers outside a
    transaction proceed while a writer works.
    """
    connect_args = dict(engine_kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", busy_timeout)
    connect_args.setdefault("check_same_thread", False)
    engine_kwargs.setdefault("hide_parameters", True)  # no payload in error messages
    engine = sa.create_engine(url, connect_args=connect_args, **engine_kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN instead of pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
