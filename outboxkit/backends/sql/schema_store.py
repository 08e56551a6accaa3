"""Creating, checking and upgrading the outbox tables, and printing their DDL (the
:class:`~outboxkit.store.SchemaStore` role)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.elements import TextClause

from outboxkit.backends.schema import build_table, table_ddl
from outboxkit.backends.sql.store import (
    SqlStore,
)
from outboxkit.errors import ConfigurationError, RepositoryError, SchemaError
from outboxkit.routing import Route
from outboxkit.store import SchemaStore

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: One DDL statement of a plan: created (``CREATE TABLE``/``INDEX``) or added (``ALTER``).
Statement = CreateTable | CreateIndex | TextClause


class SqlSchemaStore(SqlStore, SchemaStore):
    """Creating, checking and upgrading the outbox tables, and printing their DDL."""

    def has_table(self, route: Route) -> bool:
        self._check_server()
        try:
            return sa.inspect(self.engine).has_table(route.table)
        except SQLAlchemyError as exc:
            raise RepositoryError(f"looking for table {route.table!r} failed: {exc}") from exc

    def create_schema(self, routes: Iterable[Route]) -> None:
        """Create missing tables; on an existing table (e.g. one the Go system created) add
        the missing ``event_id``/``lease_token`` columns and any missing index."""
        tables = [self.table(r) for r in routes]
        self._check_server()
        try:
            with self.engine.begin() as conn:
                for table in tables:
                    for statement in self._plan(conn, table):
                        conn.execute(statement)
                        logger.info("outbox table %s: %s", table.name, _describe(statement))
        except SQLAlchemyError as exc:
            names = ", ".join(t.name for t in tables)
            raise self._error(
                f"creating the outbox tables {names} failed", exc, SchemaError
            ) from exc

    def _plan(self, conn: Connection, table: sa.Table) -> list[Statement]:
        """The DDL that brings ``table`` to what outboxkit needs, judged by inspecting the
        database: the whole table when missing, else the missing nullable columns (ours;
        Go ``INSERT`` statements that do not name them keep working) and indexes."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(table.name):
            ordered = sorted(table.indexes, key=lambda i: i.name or "")
            return [CreateTable(table), *(CreateIndex(i) for i in ordered)]
        present = {c["name"] for c in inspector.get_columns(table.name)}
        preparer = conn.dialect.identifier_preparer
        plan: list[Statement] = []
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise SchemaError(
                    f"table {table.name!r} exists without the required column {column.name!r}"
                )
            col_type = column.type.compile(dialect=conn.dialect)
            plan.append(
                sa.text(
                    f"ALTER TABLE {preparer.format_table(table)} "
                    f"ADD COLUMN {preparer.format_column(column)} {col_type} NULL"
                )
            )
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        missing = [i for i in table.indexes if i.name not in indexes]
        plan.extend(CreateIndex(i) for i in sorted(missing, key=lambda i: i.name or ""))
        return plan

    def table_for(self, route: Route, metadata: sa.MetaData) -> sa.Table:
        if metadata.schema is not None:
            # The repository's statements name tables without a schema; a table placed in
            # another schema would be created where the repository never looks.
            raise ConfigurationError(
                f"the outbox table {route.table!r} lives in the connection's default schema; "
                f"pass a MetaData without schema= (got schema={metadata.schema!r})"
            )
        existing = metadata.tables.get(route.table)
        if existing is not None:
            return existing
        # The repository's dialect decides the index names (per table on MySQL, per schema
        # elsewhere) and the extra PostgreSQL claim index, as in create_schema.
        return build_table(route.table, metadata, self.dialect)

    def schema_ddl(self, routes: Iterable[Route]) -> str:
        return table_ddl([self.table(r) for r in routes], self.engine.dialect)

    def schema_upgrade_ddl(self, routes: Iterable[Route]) -> str:
        """The SQL :meth:`create_schema` would run on this database now, ``;``-terminated:
        ``CREATE`` for a missing table, ``ALTER TABLE``/``CREATE INDEX`` for an existing
        one that lacks columns or indexes (a Go table), a comment for one up to date.

        Reads the catalog (connects) but changes nothing, so a DBA or an Alembic revision
        can apply the statements instead.
        """
        tables = [self.table(r) for r in routes]
        self._check_server()
        chunks: list[str] = []
        try:
            with self.engine.connect() as conn:
                for table in tables:
                    plan = self._plan(conn, table)
                    if not plan:
                        chunks.append(f"-- {table.name}: up to date")
                        continue
                    chunks.extend(str(s.compile(dialect=conn.dialect)).strip() + ";" for s in plan)
        except SQLAlchemyError as exc:
            names = ", ".join(t.name for t in tables)
            raise SchemaError(f"inspecting the outbox tables {names} failed: {exc}") from exc
        return "\n\n".join(chunks) + "\n"


def _describe(statement: Statement) -> str:
    """A short log text for one DDL statement."""
    if isinstance(statement, CreateTable):
        return "created"
    if isinstance(statement, CreateIndex):
        return f"created index {statement.element.name}"
    return str(statement.compile()).strip()
