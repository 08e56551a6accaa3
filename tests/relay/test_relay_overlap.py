"""The relay's overlap on a backlog: the next claim and this batch's mark run on helper threads.

On real PostgreSQL and Redis: per-key order on the stream, every row marked, a prefetched
claim given back uncounted when the broker goes away or the relay closes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.errors import BrokerUnavailableError
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.relay.relay import Relay, RelayConfig
from outboxkit.routing import Route, Routing
from outboxkit.testing.redis_server import RedisServer
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


def backlog(repository: SqlRepository, routing: Routing, count: int) -> list[str]:
    """``count`` pending rows over three keys, in one transaction; their event ids in order."""
    requests = [
        PublishRequest(event_type="order.placed", message_key=KEYS[i % len(KEYS)], payload={"n": i})
        for i in range(count)
    ]
    with repository.engine.begin() as conn:
        Publisher(repository, routing).publish_many(requests, connection=conn)
    return [request.event_id for request in requests]


def statuses(repository: SqlRepository, route: Route, event_ids: list[str]) -> list[Status]:
    rows = [repository.get_by_event_id(route, event_id) for event_id in event_ids]
    return [row.status for row in rows if row is not None]


def drain(relay: Relay) -> int:
    published = 0
    for _ in range(100):
        step = relay.run_once()
        published += step.published
        if not step.claimed:
            return published
    raise AssertionError("the relay never ran out of rows")


def test_a_backlog_is_published_in_key_order_and_every_row_is_marked(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str
) -> None:
    event_ids = backlog(repository, routing, 3 * BATCH + 5)
    broker = RedisStreamsBroker.from_url(redis_url)
    relay = Relay(repository, broker, route, config=RelayConfig(batch_size=BATCH))
    client = redis.Redis.from_url(redis_url)
    try:
        assert drain(relay) == len(event_ids)
        # The run that came back empty has finished every mark of the helper thread.
        assert statuses(repository, route, event_ids) == [Status.PUBLISHED] * len(event_ids)
        entries = client.xrange(route.topic)
        sent_by_key: dict[str, list[str]] = {key: [] for key in KEYS}
        for _, fields in entries:
            envelope = json.loads(fields[b"value"])
            sent_by_key[fields[b"key"].decode()].append(envelope["event_id"])
        for index, key in enumerate(KEYS):
            assert sent_by_key[key] == event_ids[index :: len(KEYS)]
    finally:
        relay.close()
        broker.close()
        client.delete(route.topic)
        client.close()


class SlowMarks(SqlRepository):
    """The real repository, its marks slowed down: a database slower to mark than the broker
    to acknowledge."""

    def mark_published(self, route: Route, ids: Any, *, token: str) -> set[int]:
        time.sleep(0.2)
        return super().mark_published(route, ids, token=token)


def test_marks_never_pile_up_behind_a_fast_broker(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str
) -> None:
    """Sent rows whose marks queue up outlive their lease and are sent again by another
    relay: the relay keeps at most one mark behind the batch it sends."""
    event_ids = backlog(repository, routing, 6 * BATCH)
    slow = SlowMarks(repository.engine)
    broker = RedisStreamsBroker.from_url(redis_url)
    relay = Relay(slow, broker, route, config=RelayConfig(batch_size=BATCH))
    try:
        sent = 0
        while step := relay.run_once():
            if not step.claimed:
                break
            sent += step.published
            marked = repository.count_by_status(route)[Status.PUBLISHED]
            # This batch's mark and the one before may still run; no older one may.
            assert sent - marked <= 2 * BATCH, (sent, marked)
        assert sent == len(event_ids)
        assert statuses(repository, route, event_ids) == [Status.PUBLISHED] * len(event_ids)
    finally:
        relay.close()
        broker.close()
        slow.close()
        redis.Redis.from_url(redis_url).delete(route.topic)


def test_a_prefetched_claim_is_given_back_uncounted_when_the_broker_goes_away(
    repository: SqlRepository, routing: Routing, route: Route
) -> None:
    event_ids = backlog(repository, routing, 4 * BATCH)
    with RedisServer() as server:
        server.start()
        broker = RedisStreamsBroker.from_url(server.url)
        relay = Relay(
            repository, broker, route, config=RelayConfig(batch_size=BATCH, outage_backoff=0.1)
        )
        try:
            assert relay.run_once().published == BATCH  # and batch 2 claimed meanwhile
            server.stop()
            with pytest.raises(BrokerUnavailableError):
                relay.run_once()  # batch 2 fails; batch 3, prefetched, is given back too
        finally:
            relay.close()
            broker.close()
    assert statuses(repository, route, event_ids[:BATCH]) == [Status.PUBLISHED] * BATCH
    rest = [repository.get_by_event_id(route, event_id) for event_id in event_ids[BATCH:]]
    assert all(row is not None and row.status is Status.PENDING for row in rest)
    assert all(row is not None and row.retry_count == 0 for row in rest)
    assert all(row is not None and row.lease_token is None for row in rest)


def test_closing_the_relay_gives_back_its_prefetched_claim(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str
) -> None:
    event_ids = backlog(repository, routing, 3 * BATCH)
    broker = RedisStreamsBroker.from_url(redis_url)
    relay = Relay(repository, broker, route, config=RelayConfig(batch_size=BATCH))
    try:
        assert relay.run_once().published == BATCH
    finally:
        relay.close()
        broker.close()
        redis.Redis.from_url(redis_url).delete(route.topic)
    # The first batch's mark finished; nothing else is held under a lease.
    assert statuses(repository, route, event_ids[:BATCH]) == [Status.PUBLISHED] * BATCH
    claim = repository.claim_due(route, limit=100, lease_seconds=5)
    assert sorted(row.event_id or "" for row in claim.messages) == sorted(event_ids[BATCH:])


def test_a_prefetched_claim_past_half_its_lease_is_claimed_again_not_sent_on_borrowed_time(
    repository: SqlRepository, routing: Routing, route: Route, redis_url: str
) -> None:
    event_ids = backlog(repository, routing, 2 * BATCH)
    broker = RedisStreamsBroker.from_url(redis_url)
    lease = 0.5
    config = RelayConfig(batch_size=BATCH, lease_seconds=lease, prefetch=True)
    relay = Relay(repository, broker, route, config=config)
    other = Relay(repository, broker, route, config=attrs.evolve(config, prefetch=False))
    client = redis.Redis.from_url(redis_url)
    try:
        assert relay.run_once().published == BATCH  # batch 2 prefetched, its lease running
        time.sleep(lease * 1.2)  # e.g. a slow broker: the lease ran out meanwhile
        assert other.run_once().published == BATCH  # another relay took batch 2 over
        assert drain(relay) == 0  # the stale claim is given back, not sent a second time
        assert statuses(repository, route, event_ids) == [Status.PUBLISHED] * len(event_ids)
        assert client.xlen(route.topic) == len(event_ids)  # each sent once
    finally:
        relay.close()
        other.close()
        broker.close()
        client.delete(route.topic)
        client.close()
