"""The repository contract on PostgreSQL, plus PostgreSQL's DDL and version floor."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.backends.dialect import parse_version
from outboxkit.backends.postgres import POSTGRESQL
from outboxkit.backends.schema import index_name
from outboxkit.errors import UnsupportedDatabaseError
from outboxkit.routing import Route
from outboxkit.testing.repository_contract import RepositoryContract

pytestmark = pytest.mark.postgres


class TestPostgresRepository(RepositoryContract):
    @pytest.fixture
    def engine(self, postgres_engine: sa.Engine) -> sa.Engine:
        return postgres_engine

    def test_a_claim_and_a_mark_are_one_autocommit_statement_each(
        self, engine: sa.Engine, repository: SqlRepository, route: Route
    ) -> None:
        """The relay's hot path: no BEGIN and COMMIT round trips around a single UPDATE."""
        ids = self.add(repository, route, 3)
        repository.now()  # the first use checks the server version: not part of the claim
        seen: list[tuple[str, bool]] = []

        def spy(conn: sa.Connection, _cursor: object, statement: str, *_: object) -> None:
            dbapi = conn.connection.dbapi_connection
            seen.append(
                (statement.split(maxsplit=1)[0].upper(), bool(getattr(dbapi, "autocommit", None)))
            )

        sa.event.listen(engine, "before_cursor_execute", spy)
        try:
            claim = repository.claim_due(route, limit=10, lease_seconds=60)
            claimed, seen[:] = list(seen), []
            published = repository.mark_published(route, ids, token=claim.token)
        finally:
            sa.event.remove(engine, "before_cursor_execute", spy)
        assert [m.id for m in claim.messages] == ids
        assert published == set(ids)
        assert claimed == [("UPDATE", True)]
        assert seen == [("UPDATE", True)]


@pytest.mark.parametrize(
    ("text", "ok"),
    [("9.4.26", False), ("9.5.0", True), ("15.5 (Debian 15.5-0+deb12u1)", True), ("16", True)],
)
def test_version_floor(text: str, ok: bool) -> None:
    if ok:
        assert POSTGRESQL.check_version(text).startswith("PostgreSQL ")
    else:
        with pytest.raises(UnsupportedDatabaseError, match=r"9\.4\.26.*>= 9\.5"):
            POSTGRESQL.check_version(text)


def test_real_server_passes_the_version_check(postgres_engine: sa.Engine) -> None:
    repository = SqlRepository(postgres_engine)
    assert parse_version(repository.server_version.split()[1]) >= (9, 5, 0)
    assert repository.describe()["dialect"] == "postgresql"


def test_index_names_carry_the_table_name_and_fit_the_limit() -> None:
    assert index_name("orders_outbox", "idx_outbox_status_next", per_table=False) == (
        "orders_outbox_idx_outbox_status_next"
    )
    long_a = index_name("a" * 60 + "_x", "idx_outbox_status_next", per_table=False)
    long_b = index_name("a" * 60 + "_y", "idx_outbox_status_next", per_table=False)
    assert len(long_a) <= 63 and len(long_b) <= 63
    assert long_a != long_b


def test_schema_ddl_names_table_indexes_and_partial_index(postgres_engine: sa.Engine) -> None:
    repository = SqlRepository(postgres_engine)
    route = Route.by_convention("billing")
    ddl = repository.schema_ddl([route])
    assert "CREATE TABLE billing_outbox_messages" in ddl
    assert "billing_outbox_messages_idx_outbox_status_next" in ddl
    assert "billing_outbox_messages_idx_outbox_service_name" in ddl
    assert "CREATE UNIQUE INDEX billing_outbox_messages_uq_outbox_event_id" in ddl
    assert "billing_outbox_messages_idx_outbox_pending_due" in ddl
    assert "WHERE status = 'pending'" in ddl
