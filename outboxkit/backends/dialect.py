"""The differences between databases, held as one value instead of ``if`` branches in SQL code.

:class:`~outboxkit.backends.sql.SqlRepository` writes every statement once with SQLAlchemy
Core; whatever differs between PostgreSQL, MySQL/MariaDB and SQLite (the clock, how to skip a
duplicate ``event_id`` without aborting the caller's transaction, row locking, extra
indexes, the minimum server version) is a field of a :class:`Dialect`. The three values live
in :mod:`~outboxkit.backends.postgres`, :mod:`~outboxkit.backends.mysql` and
:mod:`~outboxkit.backends.sqlite`; the table in :mod:`~outboxkit.backends.dialects` picks one
for an engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.errors import UnsupportedDatabaseError

#: Builds ``INSERT INTO table ... <skip rows whose event_id already exists>``.
InsertIgnoreFactory = Callable[[sa.Table], Insert]
#: Builds the dialect's extra indexes for a table; the second argument names an index.
ExtraIndexFactory = Callable[[sa.Table, Callable[[str], str]], list[sa.Index]]

_VERSION_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """The leading ``major.minor.patch`` of a server version string (missing parts are 0).

    Accepts what servers report, e.g. ``"15.5 (Debian 15.5-0+deb12u1)"``,
    ``"8.0.36"`` or ``"10.11.19-MariaDB-0+deb12u1"``.
    """
    match = _VERSION_RE.match(text or "")
    if match is None:
        raise UnsupportedDatabaseError(f"cannot parse the database server version {text!r}")
    return (
        int(match.group(1)),
        int(match.group(2) or 0),
        int(match.group(3) or 0),
    )


def _format(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@attrs.frozen(kw_only=True)
class SessionLock:
    """A named lock held by a database session, taken without waiting.

    ``acquire`` and ``release`` are SQL with one ``:key`` parameter; ``acquire`` returns 1
    when the lock was taken. ``key`` turns a lock name into that parameter. A session that
    dies releases its locks, so a crashed holder never blocks the others.
    """

    acquire: str
    release: str
    key: Callable[[str], Any]


@attrs.frozen(kw_only=True)
class Dialect:
    """What one database family needs done differently; everything else is shared SQL.

    Fields:

    * ``name``: the family (``postgresql``, ``mysql``, ``sqlite``), for logs and ``describe``.
    * ``now``: a SQL expression for the current time in naive UTC by the clock that decides
      due-ness (the database server's; SQLite: the process clock as a bound value). It must
      be constant within one statement so it can use an index.
    * ``insert_ignore``: an ``INSERT`` that skips a row whose ``event_id`` exists, without
      aborting the transaction and without hiding any other error (never ``INSERT IGNORE``,
      which also swallows truncation and type errors on MySQL).
    * ``insert_returning``: the ignore-insert can ``RETURNING id, event_id`` for the rows it
      actually inserted; otherwise existing ids are read before and after the insert.
    * ``supports_skip_locked``: claims use ``FOR UPDATE SKIP LOCKED``.
    * ``supports_concurrent_claims``: several claimers can hold claims at the same moment
      (false for SQLite, where one writer at a time is the rule: claims serialize).
    * ``index_names_per_table``: index names are scoped to their table (MySQL) rather than
      the schema (PostgreSQL, SQLite), where they must carry the table name to be unique.
    * ``extra_indexes``: indexes beyond the Go ones (the PostgreSQL partial claim index).
    * ``own_isolation_level``: the isolation level of the repository's own transactions
      (claims, marks, consume), or ``None`` for the engine's default. MySQL/MariaDB use
      ``READ COMMITTED``: under InnoDB's default ``REPEATABLE READ`` a claim's
      ``FOR UPDATE`` scan takes next-key (gap) locks on the status index, and a caller's
      concurrent ``INSERT`` of a new pending row then deadlocks with it, aborting the
      caller's business transaction. ``READ COMMITTED`` takes no gap locks for scans.
    * ``is_transient``: whether a driver exception (the DBAPI error SQLAlchemy wraps) says
      "try the whole transaction again": a deadlock, a serialization failure, a lock wait
      that timed out. Such a failure says nothing about the rows, so the repository retries
      at once instead of reporting an outage or counting an attempt.
    * ``is_fatal``: whether a driver exception says "this setup cannot work": the password
      was refused, the database or the outbox table does not exist, a privilege is missing.
      Waiting does not fix such an error, so it becomes
      :class:`~outboxkit.errors.DatabaseSetupError` and stops the engine instead of being
      retried as an outage for ever.
    * ``is_missing_table``: whether a driver exception says a table does not exist: the
      outbox table was never created, reported with the advice to run ``migrate``.
    * ``is_missing_column``: whether a driver exception says a column does not exist: the
      sign of a table created by the Go system (or an older outboxkit) and never migrated,
      reported as a :class:`~outboxkit.errors.SchemaError` that says to run ``migrate``.
    * ``single_statement_autocommit``: work that is one statement (a claim where
      ``update_returning_old`` makes it one, a guarded mark with ``RETURNING``) runs on an
      autocommit connection: one round trip instead of three or four (BEGIN, ..., COMMIT).
      PostgreSQL; elsewhere it runs in a transaction of its own.
    * ``update_returning_old``: an ``UPDATE ... FROM (SELECT ... FOR UPDATE) old`` can
      ``RETURNING`` the subquery's columns, i.e. the values the rows had before (PostgreSQL;
      SQLite's RETURNING may not name the FROM table). The one-statement claim (``UPDATE
      ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) ... RETURNING``) and the
      consumer's mark-first pass need it.
    * ``notify``: a SQL expression that, evaluated in the publishing transaction, notifies
      listeners in other processes once the transaction commits (PostgreSQL ``pg_notify``;
      delivered on commit, dropped on rollback), or ``None`` where relays poll.
    * ``session_lock``: a cross-process named lock (:class:`SessionLock`) for work only one
      worker should do at a time (housekeeping), or ``None`` where there is none (SQLite).
    * ``version_query``/``minimum_version``/``check_version``: the server check done on the
      first connection, raising :class:`UnsupportedDatabaseError` naming what is required.
    """

    name: str
    now: Callable[[], ColumnElement[datetime]]
    insert_ignore: InsertIgnoreFactory
    insert_returning: bool
    supports_skip_locked: bool
    supports_concurrent_claims: bool
    index_names_per_table: bool
    extra_indexes: ExtraIndexFactory = attrs.field(default=lambda _table, _name: [])
    own_isolation_level: str | None = None
    is_transient: Callable[[BaseException], bool] = attrs.field(default=lambda _exc: False)
    is_fatal: Callable[[BaseException], bool] = attrs.field(default=lambda _exc: False)
    is_missing_table: Callable[[BaseException], bool] = attrs.field(default=lambda _exc: False)
    is_missing_column: Callable[[BaseException], bool] = attrs.field(default=lambda _exc: False)
    single_statement_autocommit: bool = False
    update_returning_old: bool = False
    notify: Callable[[str], ColumnElement[Any]] | None = None
    session_lock: SessionLock | None = None
    version_query: str
    check_version: Callable[[str], str]

    def describe(self) -> dict[str, Any]:
        return {
            "dialect": self.name,
            "skip_locked": self.supports_skip_locked,
            "concurrent_claims": self.supports_concurrent_claims,
        }


def require_version(
    product: str, text: str, minimum: tuple[int, int, int], *, why: str
) -> tuple[int, int, int]:
    """Parse ``text`` and raise :class:`UnsupportedDatabaseError` if older than ``minimum``."""
    version = parse_version(text)
    if version < minimum:
        raise UnsupportedDatabaseError(
            f"{product} server version {text.strip()!r} is not supported: outboxkit needs "
            f"{product} >= {_format(minimum)} ({why})"
        )
    return version
