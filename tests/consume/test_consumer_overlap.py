"""The consumer's overlap on a backlog: the next batch is received on a helper thread while
this one is recorded.

On real PostgreSQL and Redis: every event handled once, in key order, every delivery
acknowledged; a batch received ahead is left unacknowledged (and comes again) when the
subscription changes or the consumer closes; one engine step receives nothing ahead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.broker import Subscription
from outboxkit.brokers.redis_streams import RedisStreamsBroker, RedisStreamsConfig
from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.consumer import Consumer
from outboxkit.consume.outbox_ledger import OutboxLedger
from outboxkit.consume.registry import HandlerRegistry
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay
from outboxkit.routing import Route, Routing
from tests.support.engine import orders_routing, scratch_repository

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BATCH = 10
KEYS = ("a", "b", "c")


@pytest.fixture
def routing(unique: str) -> Routing:
    return orders_routing(unique)


@pytest.fixture
def route(routing: Routing) -> Route:
    return routing.route_of("order.placed")


@pytest.fixture
def repository(postgres_engine: sa.Engine, routing: Routing) -> Iterator[SqlRepository]:
    with scratch_repository(postgres_engine, routing) as repository:
        yield repository


@pytest.fixture
def stream(route: Route, redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.delete(route.topic)
    client.close()


def published_backlog(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str, count: int
) -> list[str]:
    """``count`` events over three keys, relayed to the stream; their event ids in order."""
    requests = [
        PublishRequest(event_type="order.placed", message_key=KEYS[i % len(KEYS)], payload={"n": i})
        for i in range(count)
    ]
    with repository.engine.begin() as conn:
        Publisher(repository, routing).publish_many(requests, connection=conn)
    broker = RedisStreamsBroker.from_url(redis_url)
    relay = Relay(repository, broker, route)
    try:
        while relay.run_once().claimed:
            pass
    finally:
        relay.close()
        broker.close()
    return [request.event_id for request in requests]


class Recorder:
    """The handler: records (key, event id) in the order handlers ran."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, event: Event, connection: Any) -> None:
        self.seen.append((event.message_key, event.event_id))


def consumer(
    repository: SqlRepository, routing: Routing, route: Route, handler: Recorder
) -> Consumer:
    registry = HandlerRegistry(routing)
    registry.register("order.placed", handler)
    return Consumer(
        OutboxLedger(repository, route), registry, config=ConsumerConfig(batch_size=BATCH)
    )


def pending_count(client: redis.Redis, route: Route) -> int:
    return int(client.xpending(route.topic, route.group)["pending"])


def test_a_backlog_is_handled_once_in_key_order_and_fully_acknowledged(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str, stream: redis.Redis
) -> None:
    event_ids = published_backlog(repository, routing, route, redis_url, 4 * BATCH + 3)
    handler = Recorder()
    worker = consumer(repository, routing, route, handler)
    broker = RedisStreamsBroker.from_url(redis_url)
    subscription = broker.subscribe(route.topic, route.group, "overlap-1")
    try:
        assert worker.run_once(subscription, timeout=1.0) == BATCH
        # The batch after it was received meanwhile: it waits, delivered, unacknowledged.
        assert pending_count(stream, route) == BATCH
        handled = BATCH
        for _ in range(20):
            if handled == len(event_ids):
                break
            handled += worker.run_once(subscription, timeout=1.0)
        assert handled == len(event_ids)
        assert pending_count(stream, route) == 0
    finally:
        subscription.close()
        worker.close()
        broker.close()
    assert [event_id for _, event_id in handler.seen] == event_ids
    assert repository.count_by_status(route)[Status.CONSUMED] == len(event_ids)


def test_a_batch_received_ahead_comes_again_after_the_subscription_changes(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str, stream: redis.Redis
) -> None:
    """What the engine does after a failed step: drop the subscription, subscribe again.
    The batch received ahead on the old one is neither handled nor acknowledged through
    the new one; the broker delivers it again (here: once it has been idle long enough)."""
    event_ids = published_backlog(repository, routing, route, redis_url, 3 * BATCH)
    handler = Recorder()
    worker = consumer(repository, routing, route, handler)
    broker = RedisStreamsBroker(config=RedisStreamsConfig(url=redis_url, claim_idle_seconds=0.5))
    first: Subscription = broker.subscribe(route.topic, route.group, "overlap-old")
    second: Subscription | None = None
    try:
        assert worker.run_once(first, timeout=1.0) == BATCH
        first.close()
        second = broker.subscribe(route.topic, route.group, "overlap-new")
        deadline = time.monotonic() + 20
        handled = BATCH
        while handled < len(event_ids) and time.monotonic() < deadline:
            handled += worker.run_once(second, timeout=0.5)
        assert handled == len(event_ids)
        assert pending_count(stream, route) == 0
    finally:
        if second is not None:
            second.close()
        worker.close()
        broker.close()
    assert sorted(event_id for _, event_id in handler.seen) == sorted(event_ids)
    assert len(handler.seen) == len(event_ids)  # each handled once
    assert repository.count_by_status(route)[Status.CONSUMED] == len(event_ids)


def test_without_prefetch_nothing_is_received_ahead(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str, stream: redis.Redis
) -> None:
    published_backlog(repository, routing, route, redis_url, 3 * BATCH)
    registry = HandlerRegistry(routing)
    registry.register("order.placed", Recorder())
    worker = Consumer(
        OutboxLedger(repository, route),
        registry,
        config=ConsumerConfig(batch_size=BATCH, prefetch=False),
    )
    broker = RedisStreamsBroker.from_url(redis_url)
    subscription = broker.subscribe(route.topic, route.group, "overlap-off")
    try:
        assert worker.run_once(subscription, timeout=1.0) == BATCH
        assert pending_count(stream, route) == 0
    finally:
        subscription.close()
        worker.close()
        broker.close()
