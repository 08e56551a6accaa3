"""Library logs: per-event lines with ids and ``extra=`` fields, tracebacks at the right
level, ids in the republish warning, and no secrets (payloads, passwords) in any of it.

Run against the real PostgreSQL, MariaDB and Redis; ``caplog`` captures what a log handler
of the application would receive.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.engine import Engine
from outboxkit.errors import PermanentError, RepositoryError
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.observability.logs import EVENT_ID, EVENT_TYPE, OUTBOX_ID, SERVICE, TOPIC, mask_url
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay, RelayConfig
from tests.support.engine import fast_config, unique_routing

SECRET = "4111-1111-1111-1111"  # what must never reach a log or an error message


@pytest.fixture
def engine(postgres_engine: sa.Engine, redis_url: str, unique: str) -> Iterator[tuple[Engine, str]]:
    routing = unique_routing(unique, "billing")
    for event_type in ("invoice.sent", "invoice.flaky", "invoice.bad", "invoice.lost"):
        routing.register(event_type, "billing")
    engine = Engine(
        SqlRepository(postgres_engine),
        RedisStreamsBroker.from_url(redis_url),
        routing,
        config=fast_config(),
    )
    engine.create_schema()
    yield engine, routing.route_of_service("billing").table
    engine.stop(timeout=5)
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {routing.route_of_service('billing').table}"))


def _records_of(caplog: pytest.LogCaptureFixture, event_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, EVENT_ID, None) == event_id]


def _drive(engine: Engine, until: float = 3.0) -> None:
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        engine.run_once(receive_timeout=0.2)


def test_each_event_is_logged_at_debug_with_its_ids_in_text_and_extra_fields(
    engine: tuple[Engine, str], caplog: pytest.LogCaptureFixture
) -> None:
    outbox, _table = engine
    outbox.register_handler("invoice.sent", lambda event, connection: None)
    caplog.set_level(logging.DEBUG, logger="outboxkit")

    event_id = outbox.publish(
        PublishRequest(event_type="invoice.sent", message_key="c-1", payload={"card": SECRET})
    )
    _drive(outbox, until=1.5)

    records = _records_of(caplog, event_id)
    texts = [r.getMessage() for r in records]
    assert any(t.endswith(": published") for t in texts), texts
    assert any(t.endswith(": consumed") for t in texts), texts
    route = outbox.routing.route_of_service("billing")
    for record in records:
        assert record.levelno == logging.DEBUG
        assert getattr(record, EVENT_TYPE) == "invoice.sent"
        assert getattr(record, SERVICE) == "billing"
        assert getattr(record, TOPIC) == route.topic
        assert isinstance(getattr(record, OUTBOX_ID), int)
        for part in (event_id, "invoice.sent", "billing", route.topic):
            assert part in record.getMessage()
    assert SECRET not in caplog.text


def test_handler_tracebacks_are_warnings_on_retry_and_errors_when_dead(
    engine: tuple[Engine, str], caplog: pytest.LogCaptureFixture
) -> None:
    outbox, _table = engine
    calls: list[str] = []

    @outbox.register_handler("invoice.flaky")
    def flaky(event: Event, connection: sa.Connection) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    @outbox.register_handler("invoice.bad")
    def bad(event: Event, connection: sa.Connection) -> None:
        raise PermanentError("never valid")

    caplog.set_level(logging.INFO, logger="outboxkit")
    flaky_id = outbox.publish(PublishRequest(event_type="invoice.flaky", payload={}))
    bad_id = outbox.publish(PublishRequest(event_type="invoice.bad", payload={}))
    _drive(outbox, until=2.5)

    route = outbox.routing.route_of_service("billing")
    assert outbox.repository.get_by_event_id(route, flaky_id).status is Status.CONSUMED  # type: ignore[union-attr]
    (retry,) = [r for r in _records_of(caplog, flaky_id) if r.levelno >= logging.INFO]
    assert retry.levelno == logging.WARNING and "retry scheduled" in retry.getMessage()
    assert retry.exc_info is not None and "first try fails" in caplog.text
    (dead,) = [r for r in _records_of(caplog, bad_id) if r.levelno >= logging.INFO]
    assert dead.levelno == logging.ERROR and "marked dead" in dead.getMessage()
    assert dead.exc_info is not None and dead.exc_info[0] is PermanentError


def test_a_handler_sql_error_is_logged_and_recorded_without_its_parameters(
    engine: tuple[Engine, str], caplog: pytest.LogCaptureFixture
) -> None:
    outbox, _table = engine

    @outbox.register_handler("invoice.sent")
    def store_card(event: Event, connection: sa.Connection) -> None:
        connection.execute(
            sa.text("INSERT INTO no_such_cards_table_for_outboxkit (card) VALUES (:card)"),
            {"card": event.payload["card"]},
        )

    caplog.set_level(logging.INFO, logger="outboxkit")
    event_id = outbox.publish(PublishRequest(event_type="invoice.sent", payload={"card": SECRET}))
    _drive(outbox, until=1.0)

    retries = [r for r in _records_of(caplog, event_id) if r.levelno == logging.WARNING]
    assert retries and retries[0].exc_info is not None  # with the traceback
    assert "no_such_cards_table_for_outboxkit" in caplog.text  # the error is there...
    assert SECRET not in caplog.text  # ...its parameters are not
    route = outbox.routing.route_of_service("billing")
    row = outbox.repository.get_by_event_id(route, event_id)
    assert row is not None and row.last_error is not None
    assert "no_such_cards_table_for_outboxkit" in row.last_error
    assert SECRET not in row.last_error


def test_the_republish_warning_names_the_rows_it_sends_back(
    engine: tuple[Engine, str], caplog: pytest.LogCaptureFixture
) -> None:
    outbox, _table = engine
    route = outbox.routing.route_of_service("billing")
    event_id = outbox.publish(PublishRequest(event_type="invoice.lost", payload={}))
    assert outbox.broker is not None
    relay = Relay(outbox.repository, outbox.broker, route, config=RelayConfig(republish_after=0))
    assert relay.run_once().published == 1  # published, and no consumer will ever record it
    caplog.set_level(logging.INFO, logger="outboxkit")

    assert relay.republish_stale() == 1

    row = outbox.repository.get_by_event_id(route, event_id)
    assert row is not None
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{row.id} ({event_id})" in warning.getMessage()
    assert warning.outbox_ids == [row.id]  # type: ignore[attr-defined]


def test_a_publish_in_an_aborted_transaction_raises_without_the_payload(
    engine: tuple[Engine, str], postgres_engine: sa.Engine
) -> None:
    # Given the caller's own engine (no hide_parameters) and a transaction already failed
    outbox, _table = engine
    with postgres_engine.connect() as conn, conn.begin():
        with pytest.raises(sa.exc.ProgrammingError):
            conn.execute(sa.text("SELECT * FROM no_such_table_for_outboxkit_logs"))

        # When publishing in it fails
        with pytest.raises(RepositoryError) as raised:
            outbox.publish(
                PublishRequest(event_type="invoice.sent", payload={"card": SECRET}),
                connection=conn,
            )

    # Then neither the error nor its logged traceback (causes included) holds the payload
    rendered = "".join(traceback.format_exception(raised.value))
    assert "InFailedSqlTransaction" in rendered or "aborted" in rendered
    assert SECRET not in str(raised.value)
    assert SECRET not in rendered
    assert "parameters hidden" in rendered or "[parameters" not in rendered


def test_a_publish_into_a_missing_mariadb_table_raises_without_the_payload(
    mysql_engine: sa.Engine, unique: str
) -> None:
    routing = unique_routing(unique, "billing")
    routing.register("invoice.sent", "billing")
    publisher = Publisher(SqlRepository(mysql_engine), routing)  # the table was never created
    with pytest.raises(RepositoryError) as raised, mysql_engine.begin() as conn:
        publisher.publish(
            PublishRequest(event_type="invoice.sent", payload={"card": SECRET}), connection=conn
        )

    rendered = "".join(traceback.format_exception(raised.value))
    assert "1146" in rendered
    assert SECRET not in rendered


def test_passwords_are_masked_in_urls() -> None:
    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert (
        mask_url("postgresql+psycopg2://app:s3cret@db/app")
        == "postgresql+psycopg2://app:***@db/app"
    )
    assert mask_url("kafka://broker:9092") == "kafka://broker:9092"
    assert mask_url("not a url") == "not a url"
