"""The repository contract on MariaDB/MySQL, plus the version floor and Go table adoption."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.backends.mysql import check_version, is_mariadb
from outboxkit.errors import UnsupportedDatabaseError
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route, Routing, ServiceCatalog
from outboxkit.store import NewMessage
from outboxkit.testing.repository_contract import RepositoryContract

pytestmark = pytest.mark.mysql


class TestMysqlRepository(RepositoryContract):
    @pytest.fixture
    def engine(self, mysql_engine: sa.Engine) -> sa.Engine:
        return mysql_engine


class TestMysqlRepositoryWithoutInsertReturning(RepositoryContract):
    """MySQL 8 has no ``INSERT ... RETURNING`` (MariaDB 10.5+ has): the insert is read back.

    Run on this MariaDB with SQLAlchemy told the server cannot return, so the read-back
    path keeps its contract too.
    """

    @pytest.fixture
    def engine(self, mysql_engine: sa.Engine) -> Iterator[sa.Engine]:
        engine = sa.create_engine(mysql_engine.url)
        with engine.connect():
            pass  # the dialect learns the server's abilities on the first connection
        engine.dialect.insert_returning = False
        yield engine
        engine.dispose()


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("8.0.36", "MySQL 8.0.36"),
        ("8.0.1", "MySQL 8.0.1"),
        ("8.4.0-commercial", "MySQL 8.4.0"),
        ("10.6.0-MariaDB", "MariaDB 10.6.0"),
        ("10.11.19-MariaDB-0+deb12u1", "MariaDB 10.11.19"),
        ("11.4.2-MariaDB-ubu2404", "MariaDB 11.4.2"),
    ],
)
def test_supported_versions(text: str, described: str) -> None:
    assert check_version(text) == described


@pytest.mark.parametrize(
    ("text", "needed"),
    [
        ("5.7.44", r"MySQL >= 8\.0\.1"),
        ("8.0.0-dmr", r"MySQL >= 8\.0\.1"),
        ("10.5.22-MariaDB", r"MariaDB >= 10\.6"),
        ("5.5.5-10.3.39-MariaDB", r"MariaDB >= 10\.6"),
    ],
)
def test_unsupported_versions_name_the_server_and_the_requirement(text: str, needed: str) -> None:
    with pytest.raises(UnsupportedDatabaseError, match=needed) as caught:
        check_version(text)
    assert text in str(caught.value)
    assert "SKIP LOCKED" in str(caught.value)


def test_mariadb_is_recognised() -> None:
    assert is_mariadb("10.11.19-MariaDB-0+deb12u1")
    assert not is_mariadb("8.0.36")


def test_real_server_passes_the_version_check(mysql_engine: sa.Engine) -> None:
    repository = SqlRepository(mysql_engine)
    assert repository.server_version.split()[0] in ("MySQL", "MariaDB")
    assert repository.describe()["dialect"] == "mysql"


def test_schema_ddl_keeps_the_go_index_names(mysql_engine: sa.Engine) -> None:
    ddl = SqlRepository(mysql_engine).schema_ddl([Route.by_convention("task")])
    assert "CREATE TABLE task_outbox_messages" in ddl
    assert "CREATE INDEX idx_outbox_status_next ON task_outbox_messages" in ddl
    assert "CREATE INDEX idx_outbox_service_name ON task_outbox_messages" in ddl
    assert "CREATE UNIQUE INDEX uq_outbox_event_id ON task_outbox_messages" in ddl
    assert "LONGTEXT" in ddl
    assert "DATETIME(6)" in ddl
    assert "utf8mb4" in ddl


GO_DDL = """
CREATE TABLE {table} (
  id BIGINT NOT NULL AUTO_INCREMENT,
  biz_type VARCHAR(64) NOT NULL,
  service_name VARCHAR(64) NOT NULL DEFAULT '',
  topic VARCHAR(128) NOT NULL,
  message_key VARCHAR(128) NOT NULL,
  payload LONGTEXT NOT NULL,
  status VARCHAR(32) NOT NULL,
  retry_count BIGINT NOT NULL DEFAULT 0,
  max_retry BIGINT NOT NULL DEFAULT 20,
  next_retry_at DATETIME(3) NULL,
  last_error TEXT NULL,
  published_at DATETIME(3) NULL,
  consumed_at DATETIME(3) NULL,
  created_at DATETIME(3) NULL,
  updated_at DATETIME(3) NULL,
  PRIMARY KEY (id),
  INDEX idx_outbox_status_next (status, next_retry_at, biz_type),
  INDEX idx_outbox_service_name (service_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


def test_create_schema_adopts_a_table_the_go_system_created(
    mysql_engine: sa.Engine, unique: str
) -> None:
    service = f"task-{unique}"
    catalog = ServiceCatalog(namespace="smartflow")
    catalog.configure(service)
    routing = Routing(catalog)
    route = routing.register("task.urgency", service)
    repository = SqlRepository(mysql_engine)
    go_shell = json.dumps({"event_type": "task.urgency", "payload": {"user_id": 3}})
    try:
        with mysql_engine.begin() as conn:
            conn.exec_driver_sql(GO_DDL.format(table=route.table))
            conn.execute(
                sa.text(
                    f"INSERT INTO {route.table} (biz_type, service_name, topic, message_key,"
                    " payload, status, retry_count, max_retry, next_retry_at, created_at,"
                    " updated_at) VALUES ('task.urgency', :s, :t, '3', :p, 'pending', 0, 20,"
                    " UTC_TIMESTAMP(3), UTC_TIMESTAMP(3), UTC_TIMESTAMP(3))"
                ),
                {"s": service, "t": route.topic, "p": go_shell},
            )
        repository.create_schema([route])
        repository.create_schema([route])
        inspector = sa.inspect(mysql_engine)
        columns = {c["name"] for c in inspector.get_columns(route.table)}
        assert {"event_id", "lease_token"} <= columns
        indexes = {i["name"]: i for i in inspector.get_indexes(route.table)}
        assert indexes["uq_outbox_event_id"]["unique"]
        assert "idx_outbox_status_next" in indexes
        event_id = Publisher(repository, routing).publish(
            PublishRequest(event_type="task.urgency", payload={"user_id": 4}, message_key="4")
        )
        claim = repository.claim_due(route, limit=10, lease_seconds=30)
        assert [m.event_id for m in claim.messages] == [None, event_id]
        ids = [m.id for m in claim.messages]
        assert repository.mark_published(route, ids, token=claim.token) == set(ids)
        assert repository.count_by_status(route)[Status.PUBLISHED] == 2
    finally:
        with mysql_engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {route.table}")


def test_last_error_with_four_byte_characters_is_stored_on_utf8mb4(
    mysql_engine: sa.Engine, unique: str
) -> None:
    route = Route.by_convention(f"e-{unique}")
    repository = SqlRepository(mysql_engine)
    repository.create_schema([route])
    try:
        with mysql_engine.connect() as conn:
            charset = conn.execute(
                sa.text(
                    "SELECT CCSA.character_set_name FROM information_schema.TABLES T"
                    " JOIN information_schema.COLLATION_CHARACTER_SET_APPLICABILITY CCSA"
                    " ON CCSA.collation_name = T.table_collation"
                    " WHERE T.table_schema = DATABASE() AND T.table_name = :t"
                ),
                {"t": route.table},
            ).scalar_one()
        assert charset == "utf8mb4"
    finally:
        with mysql_engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {route.table}")


def test_a_claim_locks_about_its_limit_and_concurrent_claimers_both_get_full_batches(
    mysql_engine: sa.Engine, unique: str
) -> None:
    """With a due backlog 20 times the batch, a claim held open locks about ``limit`` rows
    (the claim index serves its order), so a second claimer still gets a full batch."""
    route = Route.by_convention(f"t{unique}")
    repository = SqlRepository(mysql_engine)
    repository.create_schema([route])
    table = repository.table(route)
    limit = 50
    try:
        with repository.transaction() as conn:
            repository.add(
                conn,
                route,
                [
                    NewMessage(event_id=f"e{n}", event_type="t", message_key=f"k{n}", payload="{}")
                    for n in range(limit * 20)
                ],
            )
        query = (
            sa.select(table.c.id)
            .where(table.c.status == "pending", table.c.next_retry_at <= sa.func.utc_timestamp(6))
            .order_by(table.c.next_retry_at, table.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with mysql_engine.connect() as holder:
            holder.exec_driver_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            holder.commit()
            with holder.begin():
                held = holder.execute(query).scalars().all()
                assert len(held) == limit
                locked = holder.exec_driver_sql(
                    "SELECT trx_rows_locked FROM information_schema.INNODB_TRX "
                    "WHERE trx_mysql_thread_id = CONNECTION_ID()"
                ).scalar_one()
                assert locked <= 2 * limit + 2, f"a claim of {limit} locked {locked} rows"
                claim = repository.claim_due(route, limit=limit, lease_seconds=30)
                assert len(claim.messages) == limit
                assert not {m.id for m in claim.messages} & set(held)
    finally:
        with mysql_engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {route.table}"))


def test_own_transactions_are_read_committed_and_leave_the_application_pool_alone(
    mysql_engine: sa.Engine,
) -> None:
    """Claims and marks run READ COMMITTED (no gap locks) on a pool of the repository's own,
    set once per connection; the application's connections keep their own level."""
    app = sa.create_engine(mysql_engine.url, pool_size=1, max_overflow=0)
    repository = SqlRepository(app)
    try:
        with repository.transaction() as conn:
            assert conn.exec_driver_sql("SELECT @@tx_isolation").scalar() == "READ-COMMITTED"
        with app.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@tx_isolation").scalar() == "REPEATABLE-READ"
    finally:
        repository.close()
        app.dispose()
