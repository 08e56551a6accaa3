"""MySQL 8.0.1+ and MariaDB 10.6+: ``ON DUPLICATE KEY UPDATE id=id`` and ``SKIP LOCKED``.

``SKIP LOCKED`` is what the version floor is about: MySQL 5.7 and MariaDB before 10.6 lack
it, and without it concurrent relays would either block on each other or double-claim.
Duplicates are skipped with ``ON DUPLICATE KEY UPDATE id=id`` rather than ``INSERT IGNORE``,
which would also turn truncation and conversion errors into warnings and store bad data.
The clock is ``UTC_TIMESTAMP(6)``: the server's clock in UTC whatever the session time zone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.backends.dialect import Dialect, SessionLock, require_version

MINIMUM_MYSQL = (8, 0, 1)
MINIMUM_MARIADB = (10, 6, 0)


def _now() -> ColumnElement[datetime]:
    # The precision is rendered, not bound: a bound one is renamed per row when a
    # multi-row insert is batched, and the copy in RETURNING then names no parameter.
    return sa.func.utc_timestamp(sa.literal_column("6"), type_=sa.DateTime())


def _insert_ignore(table: sa.Table) -> Insert:
    return mysql.insert(table).on_duplicate_key_update(id=table.c.id)


#: Server error numbers after which the whole transaction may simply run again.
_TRANSIENT_ERRNOS = frozenset(
    {
        1213,  # ER_LOCK_DEADLOCK: InnoDB rolled the transaction back
        1205,  # ER_LOCK_WAIT_TIMEOUT
        1020,  # ER_CHECKREAD: record changed since last read (MariaDB snapshot isolation)
    }
)


def _is_transient(exc: BaseException) -> bool:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] in _TRANSIENT_ERRNOS


#: Server error numbers that only a change of configuration can cure (``Dialect.is_fatal``).
_FATAL_ERRNOS = frozenset(
    {
        1044,  # ER_DBACCESS_DENIED_ERROR: no access to the database
        1045,  # ER_ACCESS_DENIED_ERROR: user or password refused
        1049,  # ER_BAD_DB_ERROR: unknown database
        1142,  # ER_TABLEACCESS_DENIED_ERROR: a privilege on the table is missing
        1146,  # ER_NO_SUCH_TABLE: the outbox table was never created
        1227,  # ER_SPECIFIC_ACCESS_DENIED_ERROR
        1698,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR (unix_socket/auth plugin refused us)
    }
)


def _is_fatal(exc: BaseException) -> bool:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] in _FATAL_ERRNOS


#: ER_NO_SUCH_TABLE: "Table 'shop.orders_outbox_messages' doesn't exist".
_NO_SUCH_TABLE_ERRNO = 1146


def _is_missing_table(exc: BaseException) -> bool:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] == _NO_SUCH_TABLE_ERRNO


#: ER_BAD_FIELD_ERROR: "Unknown column 'event_id' in 'field list'".
_UNKNOWN_COLUMN_ERRNO = 1054


def _is_missing_column(exc: BaseException) -> bool:
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return bool(args) and args[0] == _UNKNOWN_COLUMN_ERRNO


#: Index that serves the claim's ``WHERE status = 'pending' AND next_retry_at <= now ORDER BY
#: next_retry_at, id`` in order (InnoDB appends the primary key), so a claim reads and locks
#: about ``limit`` rows. The Go index ``(status, next_retry_at, biz_type)`` cannot serve
#: ``ORDER BY next_retry_at, id``: the claim filesorted and locked the whole due backlog, and
#: a concurrent claimer skipped every locked row and came back empty.
IDX_CLAIM = "idx_outbox_claim"


def _extra_indexes(table: sa.Table, name: Callable[[str], str]) -> list[sa.Index]:
    return [sa.Index(name(IDX_CLAIM), table.c.status, table.c.next_retry_at)]


#: MySQL limits user lock names to 64 characters.
_MAX_LOCK_NAME = 64


def _lock_name(name: str) -> str:
    if len(name) <= _MAX_LOCK_NAME:
        return name
    return name[: _MAX_LOCK_NAME - 17] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]


#: ``GET_LOCK(name, 0)``: a user lock of the session, not waiting; freed when it ends.
USER_LOCK = SessionLock(
    acquire="SELECT GET_LOCK(:key, 0)",
    release="SELECT RELEASE_LOCK(:key)",
    key=_lock_name,
)


def is_mariadb(version: str) -> bool:
    """True for a MariaDB ``VERSION()`` string such as ``10.11.19-MariaDB-0+deb12u1``."""
    return "mariadb" in version.lower()


def check_version(text: str) -> str:
    """Raise :class:`UnsupportedDatabaseError` unless ``text`` is MySQL >= 8.0.1 or MariaDB >= 10.6.

    Returns a short description such as ``"MariaDB 10.11.19"``.
    """
    if is_mariadb(text):
        product, minimum = "MariaDB", MINIMUM_MARIADB
    else:
        product, minimum = "MySQL", MINIMUM_MYSQL
    version = require_version(product, text, minimum, why="SELECT ... FOR UPDATE SKIP LOCKED")
    return product + " " + ".".join(str(p) for p in version)


MYSQL = Dialect(
    name="mysql",
    now=_now,
    insert_ignore=_insert_ignore,
    insert_returning=False,
    supports_skip_locked=True,
    supports_concurrent_claims=True,
    # Index names are per table on MySQL: keep the Go names, so a Go AutoMigrate run
    # against one of our tables recognises its indexes instead of adding copies.
    index_names_per_table=True,
    extra_indexes=_extra_indexes,
    # No gap locks in our own transactions: see Dialect.own_isolation_level.
    own_isolation_level="READ COMMITTED",
    is_transient=_is_transient,
    is_fatal=_is_fatal,
    is_missing_table=_is_missing_table,
    is_missing_column=_is_missing_column,
    session_lock=USER_LOCK,
    version_query="SELECT VERSION()",
    check_version=check_version,
)
