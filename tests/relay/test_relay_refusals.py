"""An event the broker refuses for good goes ``dead`` at once, with the broker's reason.

Against the real brokers: the session's Tansu through kafka-python and librdkafka (a
producer whose size limit is below the event) and Redis Streams (a stream key holding
another type). Such an event used to be retried until ``max_retry``, every attempt failing
the same way; the events of other keys in the batch are published as usual.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.messages import OutboxMessage, PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay
from outboxkit.routing import Route, Routing
from tests.support.engine import orders_routing

#: The producer's size limit in these tests, far below the big event.
SIZE_LIMIT = 2_000


@pytest.fixture
def routing(unique: str) -> Routing:
    return orders_routing(unique)


@pytest.fixture
def route(routing: Routing) -> Route:
    return routing.route_of("order.placed")


@pytest.fixture
def repository(sqlite_engine: sa.Engine, route: Route) -> Iterator[SqlRepository]:
    repository = SqlRepository(sqlite_engine)
    repository.create_schema([route])
    yield repository
    repository.close()


def _publish(repository: SqlRepository, routing: Routing, key: str, size: int) -> str:
    request = PublishRequest(event_type="order.placed", message_key=key, payload="x" * size)
    return Publisher(repository, routing).publish(request)


def _row(repository: SqlRepository, route: Route, event_id: str) -> OutboxMessage:
    row = repository.get_by_event_id(route, event_id)
    assert row is not None
    return row


def _small_limit_broker(client: str, bootstrap: str) -> Broker:
    if client == "kafka":
        from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

        return KafkaBroker(KafkaConfig.from_bootstrap(bootstrap, max_request_size=SIZE_LIMIT))
    from outboxkit.brokers.confluent import ConfluentKafkaBroker

    return ConfluentKafkaBroker.from_bootstrap(bootstrap, message_max_bytes=SIZE_LIMIT)


@pytest.mark.kafka
@pytest.mark.parametrize("client", ["kafka", "confluent"])
def test_an_event_larger_than_the_producer_accepts_is_dead_at_once_with_the_reason(
    client: str, kafka_bootstrap: str, repository: SqlRepository, routing: Routing, route: Route
) -> None:
    # Given a producer that accepts 2,000 bytes, an event of 5,000 and a small one
    big = _publish(repository, routing, "big", 5_000)
    small = _publish(repository, routing, "small", 10)
    with _small_limit_broker(client, kafka_bootstrap) as broker:
        broker.ensure_topic(route.topic)
        # When the relay sends them once
        step = Relay(repository, broker, route).run_once()
    # Then the big one is dead without a retry, saying why; the small one is published
    assert (step.published, step.dead, step.retried) == (1, 1, 0), step
    row = _row(repository, route, big)
    assert (row.status, row.retry_count) == (Status.DEAD, 0)
    assert row.last_error is not None
    assert "refused the message for good" in row.last_error
    assert "MessageSizeTooLargeError" in row.last_error or "MSG_SIZE_TOO_LARGE" in row.last_error
    assert _row(repository, route, small).status is Status.PUBLISHED


@pytest.mark.redis
def test_an_event_for_a_redis_key_of_another_type_is_dead_at_once_with_the_reason(
    redis_url: str, repository: SqlRepository, routing: Routing, route: Route
) -> None:
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    # Given the service's stream key holding a string, which no XADD can ever extend
    client = redis.Redis.from_url(redis_url)
    client.set(route.topic, "not a stream")
    event_id = _publish(repository, routing, "k", 10)
    try:
        with RedisStreamsBroker.from_url(redis_url) as broker:
            # When the relay sends the event once
            step = Relay(repository, broker, route).run_once()
    finally:
        client.delete(route.topic)
        client.close()
    # Then it is dead without a retry, with Redis's reason
    assert (step.dead, step.retried) == (1, 0), step
    row = _row(repository, route, event_id)
    assert (row.status, row.retry_count) == (Status.DEAD, 0)
    assert row.last_error is not None and "WRONGTYPE" in row.last_error
