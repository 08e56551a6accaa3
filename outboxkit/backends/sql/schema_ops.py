"""Creating and upgrading the outbox tables, and printing their DDL."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from outboxkit.backends.schema import table_ddl
from outboxkit.backends.sql.store import (
    SqlStore,
)
from outboxkit.errors import RepositoryError, SchemaError
from outboxkit.routing import Route

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SchemaOps(SqlStore):
    """Creating and upgrading the outbox tables, and printing their DDL."""

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

    def has_table(self, route: Route) -> bool | None:
        self._check_server()
        try:
            with self.engine.connect() as conn:
                return bool(sa.inspect(conn).has_table(route.table))
        except SQLAlchemyError as exc:
            raise RepositoryError(f"checking for table {route.table!r} failed: {exc}") from exc

    def schema_ddl(self, routes: Iterable[Route]) -> str:
        return table_ddl([self.table(r) for r in routes], self.engine.dialect)
