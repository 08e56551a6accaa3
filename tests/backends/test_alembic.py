"""The Alembic recipe of ``docs/alembic.md``, run as written on real PostgreSQL and MariaDB.

Each test makes a new, empty database, copies the recipe's blocks into a fresh
``alembic init`` project and runs the ``alembic`` command the way a user would (a
subprocess per command, so each sees the database through its own import of the app).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from outboxkit.backends import SqlRepository
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Routing
from tests.support.doc_blocks import python_blocks
from tests.support.paths import ROOT

RECIPE = ROOT / "docs" / "alembic.md"
#: The tables the recipe's models and routes name.
OUTBOX_TABLES = {"orders_outbox_messages", "billing_outbox_messages"}
APP_TABLES = {"orders"}
ALEMBIC_TIMEOUT = 60


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def empty_database(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    """A new database on the server under test, dropped afterwards."""
    server: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    name = f"okx_alembic_{uuid.uuid4().hex[:10]}"
    admin = server.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sa.exc.DBAPIError as exc:
        pytest.fail(
            f"the Alembic test needs to create a database on {server.url}: {exc}", pytrace=False
        )
    engine = sa.create_engine(server.url.set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}")


def _project(tmp_path: Path, url: str) -> Path:
    """``alembic init`` plus the recipe: the app's modules and the ``env.py`` change."""
    project = tmp_path / "project"
    project.mkdir()
    _alembic(project, url, "init", "migrations")
    ini = project / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "sqlalchemy.url = driver://user:pass@localhost/dbname", f"sqlalchemy.url = {url}"
        )
    )
    blocks = {b.path: b.source for b in python_blocks(RECIPE)}
    assert set(blocks) == {"myapp/models.py", "myapp/events.py", "migrations/env.py"}
    (project / "myapp").mkdir()
    (project / "myapp" / "__init__.py").write_text("")
    for path in ("myapp/models.py", "myapp/events.py"):
        (project / path).write_text(blocks[path])
    env = project / "migrations" / "env.py"
    original = env.read_text()
    assert "\ntarget_metadata = None\n" in original, "alembic's env.py template changed"
    env.write_text(
        original.replace("\ntarget_metadata = None\n", "\n" + blocks["migrations/env.py"])
    )
    return project


def _alembic(project: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``alembic *args`` in ``project`` with the app's ``DATABASE_URL`` set."""
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=ALEMBIC_TIMEOUT,
        check=False,
    )


def _upgrade_ops(project: Path) -> str:
    """The body of ``upgrade()`` of the one revision (``downgrade()`` drops, by design)."""
    (revision,) = (project / "migrations" / "versions").glob("*.py")
    script = revision.read_text()
    start, end = script.index("def upgrade()"), script.index("def downgrade()")
    return script[start:end]


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"alembic failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_autogenerate_creates_the_outbox_tables_and_never_drops_them(
    empty_database: sa.Engine, tmp_path: Path
) -> None:
    url = empty_database.url.render_as_string(hide_password=False)
    project = _project(tmp_path, url)

    # Given an empty database, When autogenerate runs with the recipe's env.py
    _ok(_alembic(project, url, "revision", "--autogenerate", "-m", "orders and outbox"))
    script = _upgrade_ops(project)
    # Then the migration creates the app's and the outbox tables and drops nothing
    for table in OUTBOX_TABLES | APP_TABLES:
        assert f"op.create_table('{table}'" in script, script
    assert "drop_table" not in script
    assert "drop_index" not in script

    # When it is applied, Then the tables are there and nothing is left to migrate
    _ok(_alembic(project, url, "upgrade", "head"))
    assert set(sa.inspect(empty_database).get_table_names()) >= OUTBOX_TABLES | APP_TABLES
    assert "No new upgrade operations detected" in _ok(_alembic(project, url, "check"))

    # And the migrated tables are the outbox's: events are written and claimed through them
    routing = Routing()
    route = routing.register("order.placed", "orders")
    repository = SqlRepository(empty_database)
    with empty_database.begin() as conn:
        Publisher(repository, routing).publish(
            PublishRequest(event_type="order.placed", payload={"id": 1}), connection=conn
        )
    claim = repository.claim_due(route, limit=10, lease_seconds=30)
    assert [m.event_type for m in claim.messages] == ["order.placed"]


def test_tables_made_by_create_schema_need_no_migration_with_the_recipe(
    empty_database: sa.Engine, tmp_path: Path
) -> None:
    url = empty_database.url.render_as_string(hide_password=False)
    project = _project(tmp_path, url)
    routing = Routing()
    routing.register("order.placed", "orders")
    routing.register("invoice.requested", "billing")
    repository = SqlRepository(empty_database)

    # Given outbox tables created by outboxkit itself (outboxkit migrate), not by Alembic
    repository.create_schema(routing.routes())
    # Then without the recipe autogenerate would drop them (the bug the recipe fixes)
    with empty_database.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), sa.MetaData())
    removed = {d[1].name for d in diffs if d[0] == "remove_table"}
    assert removed == OUTBOX_TABLES

    # When the app adopts Alembic with the recipe, its first migration creates only the
    # app's table: the existing outbox tables already match the metadata
    _ok(_alembic(project, url, "revision", "--autogenerate", "-m", "adopt alembic"))
    script = _upgrade_ops(project)
    assert "op.create_table('orders'" in script
    for table in OUTBOX_TABLES:
        assert table not in script, script
    assert "drop_" not in script
    _ok(_alembic(project, url, "upgrade", "head"))
    assert "No new upgrade operations detected" in _ok(_alembic(project, url, "check"))
