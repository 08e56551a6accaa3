"""The repository contract on SQLite, plus SQLite's engine setup and version floor."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository, create_sqlite_engine
from outboxkit.backends.sqlite import SQLITE
from outboxkit.errors import UnsupportedDatabaseError
from outboxkit.routing import Route
from outboxkit.testing.repository_contract import RepositoryContract
from tests.support.concurrency import join_all


class TestSqliteRepository(RepositoryContract):
    # One writer at a time: claims serialize (BEGIN IMMEDIATE) instead of skipping locks.
    supports_concurrent_claims = False
    ddl_beside_open_writers = False

    @pytest.fixture
    def engine(self, sqlite_engine: sa.Engine) -> sa.Engine:
        return sqlite_engine


def test_engine_uses_wal_and_begin_immediate(sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        conn.exec_driver_sql("SELECT 1")
        # BEGIN IMMEDIATE took the write lock: a second writer cannot start at once
        other = sa.create_engine(str(sqlite_engine.url), connect_args={"timeout": 0})
        try:
            with other.connect() as raw, pytest.raises(sa.exc.OperationalError, match="locked"):
                raw.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            other.dispose()


def test_concurrent_writers_wait_instead_of_failing(tmp_path: object) -> None:
    engine = create_sqlite_engine(f"sqlite:///{tmp_path}/w.db")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def work() -> None:
            try:
                barrier.wait(10)
                for _ in range(20):
                    with engine.begin() as conn:
                        total = conn.exec_driver_sql("SELECT count(*) FROM t").scalar()
                        conn.exec_driver_sql(f"INSERT INTO t VALUES ({total})")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        join_all(threads, 30)
        assert errors == []
        with engine.connect() as conn:
            values = [r[0] for r in conn.exec_driver_sql("SELECT n FROM t ORDER BY n")]
        # read-then-write transactions serialized: every count was seen exactly once
        assert values == list(range(80))
    finally:
        engine.dispose()


def test_version_floor() -> None:
    assert SQLITE.check_version("3.40.1") == "SQLite 3.40.1"
    with pytest.raises(UnsupportedDatabaseError, match=r"3\.31\.1.*>= 3\.35"):
        SQLITE.check_version("3.31.1")


def test_schema_ddl_and_idempotent_create(sqlite_engine: sa.Engine, unique: str) -> None:
    repository = SqlRepository(sqlite_engine)
    route = Route.by_convention(f"svc-{unique}")
    ddl = repository.schema_ddl([route])
    assert f"CREATE TABLE {route.table}" in ddl
    assert f"{route.table}_idx_outbox_status_next" in ddl
    assert f"CREATE UNIQUE INDEX {route.table}_uq_outbox_event_id" in ddl
    repository.create_schema([route])
    repository.create_schema([route])
    indexes = {i["name"] for i in sa.inspect(sqlite_engine).get_indexes(route.table)}
    assert f"{route.table}_idx_outbox_service_name" in indexes


def test_from_url_owns_and_disposes_its_engine(tmp_path: object) -> None:
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/own.db")
    assert repository.describe()["dialect"] == "sqlite"
    assert repository.now().tzinfo is None
    assert repository.server_version.startswith("SQLite 3.")
    repository.close()
