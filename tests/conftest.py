"""Fixtures shared by the whole suite: real services, unique names, loud failures.

A service that cannot be reached fails the tests that need it with its name and address;
nothing is ever skipped because a server is down.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outboxkit.backends.urls import database_url
from outboxkit.testing import services

pytest_plugins = ["tests.support.kafka_server"]

_RESTART_HINTS = {
    "PostgreSQL": " (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
    "main start)",
    "MariaDB/MySQL": " (start it: start-stop-daemon --start --oknodo --background "
    "--exec /usr/sbin/mariadbd)",
    "Redis": ' (start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "")',
}


def _engine(service: str, url: str, port: int) -> Iterator[sa.Engine]:
    try:
        services.require_tcp(service, url, port, _RESTART_HINTS[service])
    except services.ServiceUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    engine = sa.create_engine(database_url(url), pool_pre_ping=True, pool_size=10, max_overflow=10)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"{service} at {url} refused the test connection: {exc}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[sa.Engine]:
    """The real PostgreSQL server (``OUTBOXKIT_TEST_POSTGRES_URL`` to override)."""
    yield from _engine("PostgreSQL", services.postgres_url(), 5432)


@pytest.fixture(scope="session")
def mysql_engine() -> Iterator[sa.Engine]:
    """The real MariaDB/MySQL server (``OUTBOXKIT_TEST_MYSQL_URL`` to override)."""
    yield from _engine("MariaDB/MySQL", services.mysql_url(), 3306)


@pytest.fixture
def sqlite_engine(tmp_path: object) -> Iterator[sa.Engine]:
    """A file-backed SQLite database private to one test."""
    from outboxkit.backends.sqlite import create_sqlite_engine

    engine = create_sqlite_engine(f"sqlite:///{tmp_path}/outbox.db")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server (``OUTBOXKIT_TEST_REDIS_URL`` to override)."""
    url = services.redis_url()
    try:
        services.require_tcp("Redis", url, 6379, _RESTART_HINTS["Redis"])
    except services.ServiceUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    return url


@pytest.fixture
def unique() -> str:
    """A short unique suffix for table, topic, stream and group names of one test."""
    return uuid.uuid4().hex[:10]
