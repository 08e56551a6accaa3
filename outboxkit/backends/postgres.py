"""PostgreSQL (9.5 or later): ``ON CONFLICT DO NOTHING`` and ``FOR UPDATE SKIP LOCKED``.

The clock is ``statement_timestamp()`` converted to UTC: the server's clock, independent of
the session time zone, and constant within a statement so the due-ness comparison can use
the partial claim index (``clock_timestamp()`` is volatile and could not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from outboxkit.backends.dialect import Dialect, SessionLock, require_version
from outboxkit.messages import Status

#: ``ON CONFLICT`` and ``SKIP LOCKED`` both arrived in 9.5.
MINIMUM_VERSION = (9, 5, 0)


def _now() -> ColumnElement[datetime]:
    return sa.func.timezone("UTC", sa.func.statement_timestamp(), type_=sa.DateTime())


def _insert_ignore(table: sa.Table) -> Insert:
    return postgresql.insert(table).on_conflict_do_nothing(index_elements=[table.c.event_id])


def _extra_indexes(table: sa.Table, name: Callable[[str], str]) -> list[sa.Index]:
    # With statistics saying most rows are pending, the planner otherwise scans the primary
    # key and re-reads every published row on each claim; this keeps claims flat.
    return [
        sa.Index(
            name("idx_outbox_pending_due"),
            table.c.next_retry_at,
            table.c.id,
            postgresql_where=table.c.status == Status.PENDING.value,
        )
    ]


#: SQLSTATEs after which the whole transaction may simply run again.
_TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
    }
)


def _is_transient(exc: BaseException) -> bool:
    return getattr(exc, "pgcode", None) in _TRANSIENT_SQLSTATES


#: SQLSTATEs that only a change of configuration can cure (see ``Dialect.is_fatal``).
_FATAL_SQLSTATES = frozenset(
    {
        "28000",  # invalid_authorization_specification (pg_hba.conf refused us)
        "28P01",  # invalid_password
        "3D000",  # invalid_catalog_name: the database does not exist
        "3F000",  # invalid_schema_name
        "42P01",  # undefined_table: the outbox table was never created
        "42501",  # insufficient_privilege
    }
)

#: Connection failures carry no SQLSTATE (psycopg2 raises them before a session exists),
#: so these server messages are matched instead.
_FATAL_CONNECT_TEXTS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # 'database "x" does not exist', 'role "x" does not exist'
    "no password supplied",
)


def _is_fatal(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None)
    if code is not None:
        return code in _FATAL_SQLSTATES
    text = str(exc)
    return "FATAL:" in text and any(t in text for t in _FATAL_CONNECT_TEXTS)


def _is_missing_table(exc: BaseException) -> bool:
    return getattr(exc, "pgcode", None) == "42P01"  # undefined_table


def _is_missing_column(exc: BaseException) -> bool:
    return getattr(exc, "pgcode", None) == "42703"  # undefined_column


#: The channel publishers notify and relays listen on; the payload is the table name.
NOTIFY_CHANNEL = "outboxkit_new_rows"


def _notify(table: str) -> ColumnElement[Any]:
    # Identical notifications of one transaction are folded into one by the server.
    return sa.func.pg_notify(NOTIFY_CHANNEL, table)


def _advisory_key(name: str) -> int:
    # A stable signed 64-bit key per name, the same in every process (hash() is salted).
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: Session-level advisory lock: released by ``pg_advisory_unlock`` or when the session ends.
ADVISORY_LOCK = SessionLock(
    acquire="SELECT pg_try_advisory_lock(:key)",
    release="SELECT pg_advisory_unlock(:key)",
    key=_advisory_key,
)


def _check_version(text: str) -> str:
    version = require_version(
        "PostgreSQL", text, MINIMUM_VERSION, why="INSERT ... ON CONFLICT and SKIP LOCKED"
    )
    return "PostgreSQL " + ".".join(str(p) for p in version)


POSTGRESQL = Dialect(
    name="postgresql",
    now=_now,
    insert_ignore=_insert_ignore,
    insert_returning=True,
    supports_skip_locked=True,
    supports_concurrent_claims=True,
    index_names_per_table=False,
    extra_indexes=_extra_indexes,
    is_transient=_is_transient,
    is_fatal=_is_fatal,
    is_missing_table=_is_missing_table,
    is_missing_column=_is_missing_column,
    single_statement_autocommit=True,
    update_returning_old=True,
    notify=_notify,
    session_lock=ADVISORY_LOCK,
    version_query="SHOW server_version",
    check_version=_check_version,
)
