"""Database and broker URLs of the library, the CLI and the demo."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository, urls
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.brokers.urls import broker_from_url
from outboxkit.cli.demo import run_demo
from outboxkit.cli.main import main
from outboxkit.errors import ConfigurationError
from outboxkit.routing import Route


def _as_platforms_give_it(engine: sa.Engine) -> str:
    """``engine``'s URL written ``postgres://user@host:port/db``, as Heroku's DATABASE_URL."""
    url = engine.url.set(drivername="postgres").render_as_string(hide_password=False)
    assert url.startswith("postgres://")
    return url


def test_a_postgres_url_as_platforms_give_it_opens_postgresql(
    postgres_engine: sa.Engine,
) -> None:
    # Given DATABASE_URL in the form Heroku and many platforms give
    url = _as_platforms_give_it(postgres_engine)
    # When a repository is built from it, Then it talks to PostgreSQL through psycopg2
    repository = SqlRepository.from_url(url)
    try:
        assert repository.server_version.startswith("PostgreSQL")
        assert repository.engine.url.drivername == "postgresql+psycopg2"
    finally:
        repository.close()


def test_the_cli_and_the_demo_accept_a_postgres_url(
    postgres_engine: sa.Engine, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _as_platforms_give_it(postgres_engine)
    route = Route.by_convention(f"urls{unique}")
    repository = SqlRepository(postgres_engine)
    repository.create_schema([route])
    try:
        # When an operator command is pointed at it, Then it works as with postgresql://
        assert main(["status", "--database-url", url, "--service", route.service, "--json"]) == 0
        assert route.table in capsys.readouterr().out
        # And the demo runs on it
        assert run_demo(database_url=url, orders=5, timeout=60, out=io.StringIO()).ok
    finally:
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{route.table}"'))
        repository.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("foo://app:s3cret@db:5432/shop", "unknown database URL scheme 'foo'"),
        ("postgresql://app:s3cret@db:port/shop", "cannot parse the database URL"),
        ("app:s3cret@db/shop", "cannot parse the database URL"),
    ],
)
def test_an_unknown_or_broken_database_url_is_one_line_without_the_password(
    url: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match=says) as raised:
        SqlRepository.from_url(url)
    assert "\n" not in str(raised.value)
    assert "s3cret" not in str(raised.value)
    # The CLI says it in one line on stderr and exits 2 (usage), no traceback
    assert main(["status", "--database-url", url, "--service", "orders"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err and "s3cret" not in err


def test_database_url_resolves_only_the_postgres_alias() -> None:
    assert urls.database_url("postgres://u@h/d").drivername == "postgresql+psycopg2"
    assert urls.database_url("postgres+pg8000://u@h/d").drivername == "postgresql+pg8000"
    assert urls.database_url("mysql+pymysql://u@h/d").drivername == "mysql+pymysql"
    assert urls.database_url("sqlite:///x.db").drivername == "sqlite"


def test_memory_and_redis_urls_give_their_brokers(redis_url: str) -> None:
    with broker_from_url("memory://") as memory, broker_from_url(redis_url) as redis_broker:
        assert isinstance(memory, MemoryBroker)
        assert isinstance(redis_broker, RedisStreamsBroker)


@pytest.mark.parametrize("url", ["amqp://127.0.0.1:5672", "kafka://", "127.0.0.1:9092"])
def test_unknown_or_incomplete_broker_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        broker_from_url(url)
