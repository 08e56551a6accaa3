"""Publisher behaviour; SQLite stands in except where each database speaks for itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.errors import DatabaseSetupError, InvalidEventError, RepositoryError
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher, PublisherConfig
from outboxkit.routing import Route, Routing
from tests.support.engine import unique_routing


@pytest.fixture
def setup(sqlite_engine: sa.Engine) -> Iterator[tuple[Publisher, SqlRepository, Route]]:
    routing = Routing()
    route = routing.register("order.placed", "orders")
    repository = SqlRepository(sqlite_engine)
    repository.create_schema([route])
    yield Publisher(repository, routing), repository, route


def test_config_defaults_and_validation() -> None:
    config = PublisherConfig()
    assert config.max_payload_bytes == 900_000
    assert config.max_retry == 20
    with pytest.raises(ValueError):
        PublisherConfig(max_retry=0)
    with pytest.raises(ValueError):
        PublisherConfig(max_payload_bytes=0)


def test_publish_many_returns_ids_in_request_order_including_repeats(
    setup: tuple[Publisher, SqlRepository, Route],
) -> None:
    publisher, repository, route = setup
    first = PublishRequest(event_type="order.placed", payload=1)
    second = PublishRequest(event_type="order.placed", payload=2)
    ids = publisher.publish_many([first, second, first])
    assert ids == [first.event_id, second.event_id, first.event_id]
    assert repository.count_by_status(route)[Status.PENDING] == 2
    assert publisher.publish_many([]) == []


def test_max_retry_from_config_is_frozen_into_the_row(
    setup: tuple[Publisher, SqlRepository, Route],
) -> None:
    publisher, repository, route = setup
    strict = Publisher(repository, publisher.routing, config=PublisherConfig(max_retry=3))
    event_id = strict.publish(PublishRequest(event_type="order.placed", payload={}))
    row = repository.get_by_event_id(route, event_id)
    assert row is not None
    assert row.max_retry == 3


def test_payload_limit_is_inclusive(setup: tuple[Publisher, SqlRepository, Route]) -> None:
    publisher, repository, _route = setup
    # The stored shell carries the correlation id the publisher fills (the event id).
    request = PublishRequest(
        event_type="order.placed", payload="x", event_id="fixed", correlation_id="fixed"
    )
    from datetime import datetime, timezone

    from outboxkit.wire.envelope import encode_shell

    size = len(encode_shell(request, occurred_at=datetime.now(timezone.utc)).encode())
    exact = Publisher(repository, publisher.routing, config=PublisherConfig(max_payload_bytes=size))
    assert exact.publish(request) == "fixed"
    smaller = Publisher(
        repository, publisher.routing, config=PublisherConfig(max_payload_bytes=size - 1)
    )
    with pytest.raises(InvalidEventError, match=f"{size} bytes.*{size - 1}"):
        smaller.publish(PublishRequest(event_type="order.placed", payload="x", event_id="fixeD"))


def test_an_oversized_event_names_the_setting_that_limits_it(
    setup: tuple[Publisher, SqlRepository, Route],
) -> None:
    # Given the default limit (900,000 bytes)
    publisher, _repository, _route = setup
    # When an event of about 1 MB is published
    with pytest.raises(InvalidEventError) as raised:
        publisher.publish(PublishRequest(event_type="order.placed", payload="x" * 1_000_000))
    # Then the error says which setting to change, with its value
    assert "over the limit of 900000 bytes" in str(raised.value)
    assert "PublisherConfig(max_payload_bytes=900000)" in str(raised.value)


def test_missing_table_is_a_repository_error(sqlite_engine: sa.Engine) -> None:
    routing = Routing()
    routing.register("order.placed", "orders")
    publisher = Publisher(SqlRepository(sqlite_engine), routing)
    with pytest.raises(RepositoryError, match="orders_outbox_messages"):
        publisher.publish(PublishRequest(event_type="order.placed", payload={}))


@pytest.mark.parametrize("database", ["postgres", "mysql", "sqlite"])
def test_publishing_into_a_table_never_created_says_to_run_migrate(
    database: str, request: pytest.FixtureRequest, unique: str
) -> None:
    # Given a service whose outbox table was never created
    db: sa.Engine = request.getfixturevalue(f"{database}_engine")
    routing = unique_routing(unique, "orders")
    route = routing.register("order.placed", "orders")
    publisher = Publisher(SqlRepository(db), routing)
    # When request code publishes in its own transaction
    with pytest.raises(DatabaseSetupError) as raised, db.begin() as conn:
        publisher.publish(PublishRequest(event_type="order.placed", payload={}), connection=conn)
    # Then the error names the table and the command that creates it, on one line
    text = str(raised.value)
    assert route.table in text
    assert "outboxkit migrate" in text
    assert "\n" not in text
