"""The inbox table, as SQLAlchemy Core metadata, and its DDL.

One table per consumer database (default name :data:`DEFAULT_INBOX_TABLE`) holds one row per
consumer group and event id. The primary key ``(consumer_group, event_id)`` is what makes a
redelivered event a no-op: the row is written in the handler's own transaction, so the
handler's writes and "this group has handled this event" commit together or not at all.

:func:`inbox_table` puts the table on any ``MetaData`` (yours, for Alembic autogenerate);
index names carry the table name, so they are unique per schema on PostgreSQL and SQLite
and still valid on MySQL.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from outboxkit.backends.schema import index_name
from outboxkit.messages import MAX_EVENT_ID
from outboxkit.routing import MAX_EVENT_TYPE, MAX_SERVICE_NAME, validate_table_name

#: Name of the inbox table when none is given.
DEFAULT_INBOX_TABLE = "outboxkit_inbox"
#: Width of ``consumer_group`` (the longest group name :mod:`outboxkit.routing` accepts).
MAX_GROUP = 255
#: Width of ``status``.
STATUS_LENGTH = 16
#: Index used by the purge (retention by age).
IDX_UPDATED = "idx_inbox_updated"


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _ident(length: int) -> sa.types.TypeEngine[str]:
    # Binary collation on MySQL: ids are compared exactly, never case-insensitively.
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def inbox_table(metadata: sa.MetaData, name: str = DEFAULT_INBOX_TABLE) -> sa.Table:
    """The inbox table called ``name`` on ``metadata`` (for Alembic or your own queries).

    Columns: ``consumer_group`` and ``event_id`` (the primary key), ``event_type``,
    ``service_name`` and ``outbox_id`` (where the event came from, for operators),
    ``status`` (``consumed``, ``failed`` while it is being retried, ``dead``), ``attempts``
    (failed attempts so far), ``last_error``, ``received_at``, ``updated_at`` and
    ``consumed_at`` (naive UTC by the database server's clock).
    """
    validate_table_name(name)
    table = sa.Table(
        name,
        metadata,
        sa.Column("consumer_group", _ident(MAX_GROUP), primary_key=True),
        sa.Column("event_id", _ident(MAX_EVENT_ID), primary_key=True),
        sa.Column("event_type", sa.String(MAX_EVENT_TYPE), nullable=False),
        sa.Column("service_name", sa.String(MAX_SERVICE_NAME), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("received_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("consumed_at", _timestamp(), nullable=True),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    sa.Index(index_name(name, IDX_UPDATED, per_table=False), table.c.updated_at)
    return table
