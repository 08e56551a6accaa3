"""The outbox table of one route, as SQLAlchemy Core metadata, and its DDL.

The columns mirror the Go ``agent_outbox_messages`` table (``biz_type`` still holds the event
type, ``payload`` the JSON event shell), so the Go relay can read rows we write and we can
read rows it wrote. Two columns are ours and nullable, so a Go ``INSERT`` that does not name
them still works:

* ``event_id`` with a UNIQUE index: database-level idempotency of publishing. NULL for Go
  rows; PostgreSQL, MySQL and SQLite all allow many NULLs in a unique index.
* ``lease_token``: the fencing token of the relay holding the row claimed.

Timestamps are naive UTC with microseconds (``DATETIME(6)`` on MySQL, whose plain
``DATETIME`` would drop the fraction and make leases and due-ness coarse).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine.interfaces import Dialect as SaDialect
from sqlalchemy.schema import CreateIndex, CreateTable

from outboxkit.backends.dialect import Dialect
from outboxkit.messages import DEFAULT_MAX_RETRY, MAX_EVENT_ID
from outboxkit.routing import (
    MAX_EVENT_TYPE,
    MAX_MESSAGE_KEY,
    MAX_SERVICE_NAME,
    MAX_TABLE_NAME,
    MAX_TOPIC,
    validate_table_name,
)

#: Width of ``lease_token`` (a UUID in its 36-character text form).
LEASE_TOKEN_LENGTH = 36
#: Width of ``status`` (the Go column).
STATUS_LENGTH = 32

#: The Go index names (MySQL keeps them as they are; see :func:`index_name`).
IDX_STATUS_NEXT = "idx_outbox_status_next"
IDX_SERVICE_NAME = "idx_outbox_service_name"
UQ_EVENT_ID = "uq_outbox_event_id"


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _ident(length: int) -> sa.types.TypeEngine[str]:
    # Binary collation on MySQL: ids are compared exactly, never case-insensitively.
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def index_name(table: str, base: str, *, per_table: bool) -> str:
    """The name of index ``base`` of ``table``.

    MySQL scopes index names to their table, so the Go names are kept. PostgreSQL and SQLite
    scope them to the schema, where one name per table is needed: ``<table>_<base>``,
    shortened with a hash of the table name when it would exceed the identifier limit
    (PostgreSQL would otherwise truncate silently, and two tables could collide).
    """
    if per_table:
        return base
    name = f"{table}_{base}"
    if len(name) <= MAX_TABLE_NAME:
        return name
    digest = hashlib.sha1(table.encode("utf-8")).hexdigest()[:8]
    keep = MAX_TABLE_NAME - len(base) - len(digest) - 2
    return f"{table[:keep]}_{digest}_{base}"


def build_table(name: str, metadata: sa.MetaData, dialect: Dialect) -> sa.Table:
    """The outbox table called ``name`` (a validated identifier) with its indexes."""
    validate_table_name(name)
    table = sa.Table(
        name,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("biz_type", sa.String(MAX_EVENT_TYPE), nullable=False),
        sa.Column("service_name", sa.String(MAX_SERVICE_NAME), nullable=False, server_default=""),
        sa.Column("topic", sa.String(MAX_TOPIC), nullable=False),
        sa.Column("message_key", sa.String(MAX_MESSAGE_KEY), nullable=False),
        sa.Column(
            "payload",
            sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),
        sa.Column("retry_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column(
            "max_retry", sa.BigInteger(), nullable=False, server_default=str(DEFAULT_MAX_RETRY)
        ),
        sa.Column("next_retry_at", _timestamp(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("published_at", _timestamp(), nullable=True),
        sa.Column("consumed_at", _timestamp(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=True),
        sa.Column("updated_at", _timestamp(), nullable=True),
        sa.Column("event_id", _ident(MAX_EVENT_ID), nullable=True),
        sa.Column("lease_token", _ident(LEASE_TOKEN_LENGTH), nullable=True),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )

    def named(base: str) -> str:
        return index_name(name, base, per_table=dialect.index_names_per_table)

    sa.Index(named(IDX_STATUS_NEXT), table.c.status, table.c.next_retry_at, table.c.biz_type)
    sa.Index(named(IDX_SERVICE_NAME), table.c.service_name)
    sa.Index(named(UQ_EVENT_ID), table.c.event_id, unique=True)
    # Creating an index object with a table column attaches it to the table.
    dialect.extra_indexes(table, named)
    return table


def table_ddl(tables: Iterable[sa.Table], sa_dialect: SaDialect) -> str:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements for ``tables``, ``;``-terminated."""
    statements: list[str] = []
    for table in tables:
        statements.append(str(CreateTable(table).compile(dialect=sa_dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            statements.append(str(CreateIndex(index).compile(dialect=sa_dialect)).strip() + ";")
    return "\n\n".join(statements) + "\n"
