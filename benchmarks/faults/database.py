"""The run's tables on the shared database, read back at the end, and connection killing.

Everything here touches only the run's own tables (unique names) and the run's own
connections (see :mod:`benchmarks.faults.tagging`); the admin engine itself carries another
application name so it never terminates itself.
"""

from __future__ import annotations

import collections
import logging

import attrs
import sqlalchemy as sa

from benchmarks.faults.app import effects_table, orders_table
from benchmarks.faults.settings import SERVICE, RunSpec
from benchmarks.faults.tagging import recorded_connection_ids, tagged_engine
from outboxkit.backends import SqlRepository
from outboxkit.messages import Status

logger = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class OutboxRow:
    id: int
    event_id: str | None
    status: str
    retry_count: int
    last_error: str | None


@attrs.frozen(kw_only=True)
class Effect:
    event_id: str
    outbox_id: int
    pid: int


class RunDatabase:
    """Creates, inspects and drops one run's tables; kills the run's connections."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.is_postgres = spec.database_url.startswith("postgresql")
        self.engine = tagged_engine(
            spec.database_url, application_name=f"okf-admin-{spec.run_id}", workdir=None
        )
        self.routing = spec.routing()
        self.route = self.routing.route_of_service(SERVICE)
        self.repository = SqlRepository(self.engine)
        self.metadata = sa.MetaData()
        self.effects = effects_table(spec.effects_table, self.metadata)
        self.orders = orders_table(spec.orders_table, self.metadata)

    def create(self) -> None:
        self.repository.create_schema([self.route])
        self.metadata.create_all(self.engine)

    def drop(self) -> None:
        self.metadata.drop_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.route.table}"))
        self.engine.dispose()

    def counts(self) -> dict[str, int]:
        counts = self.repository.count_by_status(self.route)
        return {status.value: counts.get(status, 0) for status in Status}

    def outbox_rows(self) -> list[OutboxRow]:
        table = self.repository.table(self.route)
        query = sa.select(
            table.c.id, table.c.event_id, table.c.status, table.c.retry_count, table.c.last_error
        )
        with self.engine.connect() as conn:
            return [
                OutboxRow(
                    id=int(r.id),
                    event_id=r.event_id,
                    status=str(r.status),
                    retry_count=int(r.retry_count),
                    last_error=r.last_error,
                )
                for r in conn.execute(query)
            ]

    def open_row_ids(self, limit: int) -> list[int]:
        """Ids of the newest rows not yet consumed or dead (targets for forged messages)."""
        table = self.repository.table(self.route)
        query = (
            sa.select(table.c.id)
            .where(table.c.status.in_([Status.PENDING.value, Status.PUBLISHED.value]))
            .order_by(table.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [int(i) for i in conn.execute(query).scalars()]

    def ids_in_status(self, *statuses: str) -> set[int]:
        """Ids of the rows in any of ``statuses``."""
        table = self.repository.table(self.route)
        query = sa.select(table.c.id).where(table.c.status.in_(statuses))
        with self.engine.connect() as conn:
            return {int(i) for i in conn.execute(query).scalars()}

    def effects_rows(self) -> list[Effect]:
        query = sa.select(self.effects.c.event_id, self.effects.c.outbox_id, self.effects.c.pid)
        with self.engine.connect() as conn:
            return [
                Effect(event_id=r.event_id, outbox_id=int(r.outbox_id), pid=int(r.pid))
                for r in conn.execute(query)
            ]

    def terminate_connections(self) -> int:
        """Kill every connection of the run's workers and publisher, server side."""
        if self.is_postgres:
            query = sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            )
            with self.engine.connect() as conn:
                killed = int(conn.execute(query, {"name": self.spec.application_name}).scalar_one())
                conn.commit()
            return killed
        ours = recorded_connection_ids(self.spec.workdir)
        killed = 0
        with self.engine.connect() as conn:
            own = int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
            alive = {int(i) for i in conn.exec_driver_sql("SHOW PROCESSLIST").scalars()}
            for connection_id in sorted((ours & alive) - {own}):
                try:
                    conn.exec_driver_sql(f"KILL CONNECTION {int(connection_id)}")
                    killed += 1
                except sa.exc.DBAPIError:  # it ended meanwhile
                    pass
            conn.rollback()
        return killed

    def status_histogram(self, rows: list[OutboxRow]) -> dict[str, int]:
        return dict(collections.Counter(r.status for r in rows))
