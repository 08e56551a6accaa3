"""The :class:`~outboxkit.store.SchemaStore` part of the repository suite: the tables
created (idempotently, beside a caller's transaction), put on an application's ``MetaData``
for migrations, and checked for."""

from __future__ import annotations

import sqlalchemy as sa

from outboxkit.routing import Route, Routing
from outboxkit.store import Repository
from outboxkit.testing.repository_contract.base import TYPE_A, TYPE_B, RepositoryContractBase, _drop


class SchemaStoreContract(RepositoryContractBase):
    """Behaviour of :class:`~outboxkit.store.SchemaStore`: ``create_schema``, ``table_for``,
    ``tables`` and ``has_table``.

    Beyond its role it calls ``transaction``, ``add`` and ``claim_due``: rows must flow
    through a table made from ``table_for`` rather than by ``create_schema``.
    """

    def test_create_schema_is_idempotent_and_leaves_the_callers_transaction_alone(
        self, engine: sa.Engine, repository: Repository, routing: Routing, unique: str
    ) -> None:
        first, second = routing.route_of(TYPE_A), routing.route_of(TYPE_B)
        scratch = f"okc_{unique}_scratch"
        try:
            repository.create_schema([first])
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE TABLE {scratch} (n int)")
            if self.ddl_beside_open_writers:
                with engine.connect() as caller:
                    caller.exec_driver_sql(f"INSERT INTO {scratch} VALUES (1)")
                    # DDL commits implicitly on MySQL: it must not use the caller's connection
                    repository.create_schema([first, second])
                    caller.rollback()
            else:
                repository.create_schema([first, second])
            repository.create_schema([first, second])
            with engine.connect() as conn:
                assert conn.exec_driver_sql(f"SELECT count(*) FROM {scratch}").scalar() == 0
            assert sa.inspect(engine).has_table(second.table)
        finally:
            _drop(engine, first.table, second.table, scratch)

    def test_table_for_puts_the_create_schema_table_on_the_applications_metadata(
        self, engine: sa.Engine, repository: Repository, routing: Routing
    ) -> None:
        # Given an application's own MetaData (as Alembic's target_metadata)
        route = routing.route_of(TYPE_A)
        metadata = sa.MetaData()
        # When the repository puts the route's table on it, twice
        table = repository.table_for(route, metadata)
        assert repository.table_for(route, metadata) is table
        assert repository.tables([route], metadata) == [table]
        assert metadata.tables[route.table] is table
        try:
            # Then a table created from that metadata (not by create_schema) is the one the
            # repository needs: create_schema finds nothing missing, rows flow through it
            metadata.create_all(engine)
            created = {i["name"] for i in sa.inspect(engine).get_indexes(route.table)}
            assert created == {i.name for i in table.indexes}
            repository.create_schema([route])
            inspector = sa.inspect(engine)
            assert {i["name"] for i in inspector.get_indexes(route.table)} == created
            assert {c["name"] for c in inspector.get_columns(route.table)} == set(table.c.keys())
            ids = self.add(repository, route, 2)
            claim = self.claim_all(repository, route)
            assert sorted(m.id for m in claim.messages) == ids
        finally:
            _drop(engine, route.table)

    def test_has_table_tells_a_missing_table(
        self, repository: Repository, route: Route, unique: str
    ) -> None:
        assert repository.has_table(route)
        assert not repository.has_table(Route.by_convention(f"missing-{unique}"))
