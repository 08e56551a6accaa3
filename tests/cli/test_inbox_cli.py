"""``outboxkit migrate`` creates, and ``--print-sql`` prints, the inbox tables of an app."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from outboxkit.cli.main import main
from tests.support.inbox_app import INBOX_TABLE


@pytest.fixture
def app_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "app.db"
    monkeypatch.setenv("OUTBOXKIT_TEST_INBOX_APP_DB", str(path))
    return path


def test_migrate_creates_the_inbox_but_not_the_tables_of_services_produced_elsewhere(
    app_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "tests.support.inbox_app:engine"]) == 0
    out = capsys.readouterr().out
    assert f"ready: {INBOX_TABLE} (inbox of service billing)" in out
    assert "ready: app_orders_outbox (service orders)" in out
    db = sa.create_engine(f"sqlite:///{app_db}")
    try:
        tables = set(sa.inspect(db).get_table_names())
    finally:
        db.dispose()
    assert {INBOX_TABLE, "app_orders_outbox"} <= tables
    assert "app_billing_outbox" not in tables  # billing's rows live in its producers' db


def test_print_sql_prints_the_inbox_ddl(app_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "tests.support.inbox_app:engine", "--print-sql", "--offline"]) == 0
    out = capsys.readouterr().out
    assert f"CREATE TABLE {INBOX_TABLE}" in out
    assert "PRIMARY KEY (consumer_group, event_id)" in out
    assert "CREATE TABLE app_orders_outbox" in out
    assert "app_billing_outbox" not in out
