"""Adopting a table the Go system created: a clear error before migrating, the ALTER TABLE
statements it needs from ``migrate --print-sql``, and a working outbox once they are applied.

The Go table is created with raw DDL shaped like the GORM AutoMigrate of
``AgentOutboxMessage`` (no ``event_id``, no ``lease_token``), on real PostgreSQL and MariaDB
(and SQLite, which has its own wording of a missing column).
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator

import attrs
import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.cli.main import main
from outboxkit.engine import Engine
from outboxkit.errors import SchemaError
from outboxkit.messages import PublishRequest, Status
from outboxkit.routing import Route, Routing, ServiceCatalog

_COLUMNS = """
  biz_type VARCHAR(64) NOT NULL,
  service_name VARCHAR(64) NOT NULL DEFAULT '',
  topic VARCHAR(128) NOT NULL,
  message_key VARCHAR(128) NOT NULL,
  payload {text} NOT NULL,
  status VARCHAR(32) NOT NULL,
  retry_count BIGINT NOT NULL DEFAULT 0,
  max_retry BIGINT NOT NULL DEFAULT 20,
  next_retry_at {ts} NULL,
  last_error TEXT NULL,
  published_at {ts} NULL,
  consumed_at {ts} NULL,
  created_at {ts} NULL,
  updated_at {ts} NULL"""

GO_DDL = {
    "mysql": [
        "CREATE TABLE {table} (id BIGINT NOT NULL AUTO_INCREMENT,"
        + _COLUMNS.format(text="LONGTEXT", ts="DATETIME(3)")
        + ", PRIMARY KEY (id),"
        " INDEX idx_outbox_status_next (status, next_retry_at, biz_type),"
        " INDEX idx_outbox_service_name (service_name)"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ],
    "postgresql": [
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY,"
        + _COLUMNS.format(text="TEXT", ts="TIMESTAMP(3)")
        + ")",
        # GORM on PostgreSQL: schema-wide index names, so they carry the table name.
        "CREATE INDEX idx_{table}_status_next ON {table} (status, next_retry_at, biz_type)",
        "CREATE INDEX idx_{table}_service_name ON {table} (service_name)",
    ],
    "sqlite": [
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        + _COLUMNS.format(text="TEXT", ts="DATETIME")
        + ")",
        "CREATE INDEX idx_{table}_status_next ON {table} (status, next_retry_at, biz_type)",
    ],
}

NOW = {
    "mysql": "UTC_TIMESTAMP(3)",
    "postgresql": "(now() AT TIME ZONE 'UTC')",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


@attrs.frozen
class GoTable:
    db: sa.Engine
    route: Route
    routing: Routing
    app: str

    def columns(self) -> set[str]:
        return {c["name"] for c in sa.inspect(self.db).get_columns(self.route.table)}


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def go_table(
    request: pytest.FixtureRequest, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GoTable]:
    db: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    family = db.dialect.name if db.dialect.name in GO_DDL else "mysql"
    service = f"task-{unique}"
    catalog = ServiceCatalog(namespace="smartflow")  # the Go topics: smartflow.<svc>.outbox
    catalog.configure(service)
    routing = Routing(catalog)
    route = routing.register("task.urgency", service)
    go_shell = json.dumps({"event_type": "task.urgency", "payload": {"user_id": 3}})
    with db.begin() as conn:
        for statement in GO_DDL[family]:
            conn.exec_driver_sql(statement.format(table=route.table))
        conn.execute(
            sa.text(
                f"INSERT INTO {route.table} (biz_type, service_name, topic, message_key,"
                " payload, status, retry_count, max_retry, next_retry_at, created_at,"
                f" updated_at) VALUES ('task.urgency', :s, :t, '3', :p, 'pending', 0, 20,"
                f" {NOW[family]}, {NOW[family]}, {NOW[family]})"
            ),
            {"s": service, "t": route.topic, "p": go_shell},
        )
    # The application module ``outboxkit migrate`` loads, as module:attribute.
    module = types.ModuleType(f"go_app_{unique}")
    module.engine = Engine(SqlRepository(db), MemoryBroker(), routing)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    yield GoTable(db=db, route=route, routing=routing, app=f"{module.__name__}:engine")
    with db.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {route.table}")


def test_unmigrated_go_table_fails_with_an_error_that_says_to_run_migrate(
    go_table: GoTable,
) -> None:
    repository = SqlRepository(go_table.db)
    request = PublishRequest(event_type="task.urgency", payload={"user_id": 4})

    with pytest.raises(SchemaError, match=r"lacks a column.*run `outboxkit migrate APP`"):
        Engine(repository, MemoryBroker(), go_table.routing).publish(request)
    with pytest.raises(SchemaError, match=r"outboxkit migrate APP --print-sql"):
        repository.claim_due(go_table.route, limit=10, lease_seconds=30)


def test_print_sql_shows_the_alter_statements_a_go_table_needs_and_changes_nothing(
    go_table: GoTable, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", go_table.app, "--print-sql"]) == 0

    ddl = capsys.readouterr().out
    assert "CREATE TABLE" not in ddl
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    alters = [s for s in statements if s.startswith("ALTER TABLE")]
    assert len(alters) == 2
    assert any("ADD COLUMN event_id" in s for s in alters)
    assert any("ADD COLUMN lease_token" in s for s in alters)
    assert any(s.startswith("CREATE UNIQUE INDEX") and "event_id" in s for s in statements)
    assert "event_id" not in go_table.columns()  # printed, not applied

    # When a DBA applies exactly what was printed
    with go_table.db.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)

    # Then nothing is left to do, and the Go row and a new event relay side by side
    assert main(["migrate", go_table.app, "--print-sql"]) == 0
    assert capsys.readouterr().out.strip() == f"-- {go_table.route.table}: up to date"
    repository = SqlRepository(go_table.db)
    event_id = Engine(repository, MemoryBroker(), go_table.routing).publish(
        PublishRequest(event_type="task.urgency", payload={"user_id": 4}, message_key="4")
    )
    claim = repository.claim_due(go_table.route, limit=10, lease_seconds=30)
    assert [m.event_id for m in claim.messages] == [None, event_id]
    ids = [m.id for m in claim.messages]
    assert repository.mark_published(go_table.route, ids, token=claim.token) == set(ids)
    assert repository.count_by_status(go_table.route)[Status.PUBLISHED] == 2


def test_migrate_applies_the_same_plan_to_a_go_table(
    go_table: GoTable, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", go_table.app]) == 0

    assert {"event_id", "lease_token"} <= go_table.columns()
    assert main(["migrate", go_table.app, "--print-sql"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_print_sql_creates_a_missing_table_and_offline_needs_no_table(
    sqlite_engine: sa.Engine,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    routing = Routing()
    routing.register("job.requested", f"jobs-{unique}")
    module = types.ModuleType(f"sqlite_app_{unique}")
    module.engine = Engine(SqlRepository(sqlite_engine), MemoryBroker(), routing)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    for extra in ([], ["--offline"]):
        assert main(["migrate", f"{module.__name__}:engine", "--print-sql", *extra]) == 0
        ddl = capsys.readouterr().out
        assert "CREATE TABLE" in ddl and "ALTER TABLE" not in ddl
    assert not sa.inspect(sqlite_engine).get_table_names()
