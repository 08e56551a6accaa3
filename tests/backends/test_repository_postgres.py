"""The repository contract on PostgreSQL, plus PostgreSQL's DDL and version floor."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.backends.dialect import parse_version
from outboxkit.backends.postgres import POSTGRESQL
from outboxkit.backends.schema import index_name
from outboxkit.errors import UnsupportedDatabaseError
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route
from outboxkit.testing.repository_contract import RepositoryContract
from tests.support.engine import unique_routing

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
        engines: set[int] = set()

        def spy(conn: sa.Connection, _cursor: object, statement: str, *_: object) -> None:
            engines.add(id(conn.engine.pool))
            dbapi = conn.connection.dbapi_connection
            seen.append(
                (statement.split(maxsplit=1)[0].upper(), bool(getattr(dbapi, "autocommit", None)))
            )

        # Every engine: the one-statement work runs on a pool of the repository's own.
        sa.event.listen(sa.Engine, "before_cursor_execute", spy)
        try:
            claim = repository.claim_due(route, limit=10, lease_seconds=60)
            claimed, seen[:] = list(seen), []
            published = repository.mark_published(route, ids, token=claim.token)
        finally:
            sa.event.remove(sa.Engine, "before_cursor_execute", spy)
        assert [m.id for m in claim.messages] == ids
        assert published == set(ids)
        assert claimed == [("UPDATE", True)]
        assert seen == [("UPDATE", True)]
        # Not on the application's pool: switching its connections to autocommit per
        # checkout, and back on return, leaked a pool slot when the server killed one.
        assert engines and id(engine.pool) not in engines


def test_a_connection_killed_after_an_autocommit_statement_costs_no_pool_slot(
    postgres_engine: sa.Engine, unique: str
) -> None:
    """The server may kill a connection right after a claim's statement (the fault suite's
    db-terminate does, hundreds of times); the claims go on and no pool slot is lost. Pool
    of one: every round needs its connection back. (The leak the fault suite found needs a
    kill timed inside psycopg2's return path; the test above checks the cause is gone:
    these statements no longer use the application's pool.)"""
    app = f"okt-{unique}"
    engine = sa.create_engine(
        postgres_engine.url,
        connect_args={"application_name": app},
        pool_size=1,
        max_overflow=0,
        pool_timeout=3,
    )
    routing = unique_routing(unique, "orders")
    route = routing.register("order.placed", "orders")
    repository = SqlRepository(engine)
    repository.create_schema([route])
    kill = sa.text("SELECT pg_terminate_backend(:pid)")

    def kill_after_update(conn: sa.Connection, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            pid = conn.connection.dbapi_connection.get_backend_pid()  # type: ignore[union-attr]
            with postgres_engine.connect() as killer:
                killer.execute(kill, {"pid": pid})
                for _ in range(100):  # terminating is asynchronous: wait until it is gone
                    gone = killer.execute(
                        sa.text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid"),
                        {"pid": pid},
                    ).scalar_one()
                    if gone:
                        break
                    time.sleep(0.01)

    try:
        with repository.transaction() as conn:
            Publisher(repository, routing).publish_many(
                [PublishRequest(event_type="order.placed", payload={"n": n}) for n in range(5)],
                connection=conn,
            )
        sa.event.listen(sa.Engine, "after_cursor_execute", kill_after_update)
        try:
            for _ in range(5):  # each claim's connection dies right after its UPDATE
                repository.claim_due(route, limit=1, lease_seconds=60)
        finally:
            sa.event.remove(sa.Engine, "after_cursor_execute", kill_after_update)
        # A pool slot was leaked if this times out ("QueuePool limit of size 1 ...").
        assert len(repository.claim_due(route, limit=10, lease_seconds=60).messages) == 0
        assert repository.count_by_status(route)[Status.PENDING] == 5
    finally:
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{route.table}"'))
        repository.close()
        engine.dispose()


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
