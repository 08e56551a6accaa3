"""The inbox contract on PostgreSQL, MariaDB/MySQL and SQLite."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outboxkit.testing.inbox_contract import InboxContract


@pytest.mark.postgres
class TestPostgresInbox(InboxContract):
    @pytest.fixture
    def engine(self, postgres_engine: sa.Engine) -> sa.Engine:
        return postgres_engine


@pytest.mark.mysql
class TestMysqlInbox(InboxContract):
    @pytest.fixture
    def engine(self, mysql_engine: sa.Engine) -> sa.Engine:
        return mysql_engine


class TestSqliteInbox(InboxContract):
    concurrent_writers = False  # SQLite serializes writers

    @pytest.fixture
    def engine(self, sqlite_engine: sa.Engine) -> sa.Engine:
        return sqlite_engine
