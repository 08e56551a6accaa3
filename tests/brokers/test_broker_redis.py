"""The broker contract on a real Redis server, plus what only Redis Streams can show."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from outboxkit.broker import Broker, BrokerMessage
from outboxkit.brokers.redis_streams import RedisStreamsBroker, RedisStreamsConfig
from outboxkit.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessageRejectedError,
    PermanentRejectionError,
)
from outboxkit.testing.broker_contract import BrokerContract, receive_until
from tests.support.timing import assert_within

pytestmark = pytest.mark.redis

#: Short idle and claim times so redelivery tests take about a second.
FAST = {"claim_idle_seconds": 1.0, "claim_interval_seconds": 0.3, "block_ms": 200}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def streams(redis_url: str, unique: str) -> Iterator[redis.Redis]:
    """A plain client; deletes every stream whose name contains ``unique`` afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"*{unique}*"))
    if keys:
        client.delete(*keys)
    client.close()


class TestRedisStreamsBroker(BrokerContract):
    reclaims_idle_deliveries = True
    redelivery_timeout = 8.0

    def refused_message(self, broker: Broker, topic: str, key: str) -> BrokerMessage:
        # A header that is no text: Redis cannot carry it as is, now or ever
        return BrokerMessage(topic=topic, key=key, value=b"v", headers={"n": 1})  # type: ignore[dict-item]

    @pytest.fixture
    def broker(self, redis_url: str, streams: redis.Redis) -> Iterator[Broker]:
        broker = RedisStreamsBroker.from_url(redis_url, **FAST)
        yield broker
        broker.close()

    @pytest.fixture
    def make_broker(self, redis_url: str, streams: redis.Redis) -> Callable[[], Broker]:
        return lambda: RedisStreamsBroker.from_url(redis_url, **FAST)

    @pytest.fixture
    def unreachable_broker(self) -> Iterator[Broker]:
        broker = RedisStreamsBroker.from_url(f"redis://127.0.0.1:{_closed_port()}/0", **FAST)
        yield broker
        broker.close()


@pytest.fixture
def broker(redis_url: str, streams: redis.Redis) -> Iterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker.from_url(redis_url, **FAST)
    yield broker
    broker.close()


def test_an_entry_of_a_crashed_consumer_is_claimed_after_the_idle_time(
    broker: RedisStreamsBroker, redis_url: str, unique: str
) -> None:
    # Given a consumer in another "process" took an entry and crashed: no ack, no close
    topic, group = f"s.{unique}", f"g.{unique}"
    broker.publish([BrokerMessage(topic=topic, key="k", value=b"v", headers={"n": "1"})])
    crashed = RedisStreamsBroker.from_url(redis_url, **FAST)
    taken = crashed.subscribe(topic, group, "crashed").receive(timeout=2)
    assert [d.value for d in taken] == [b"v"]
    survivor = broker.subscribe(topic, group, "survivor")
    try:
        # When the survivor reads before the idle time, it gets nothing
        started = time.monotonic()
        assert survivor.receive(timeout=0.3) == []
        # Then after claim_idle_seconds it claims the entry, counted as a second delivery
        got = receive_until([survivor], 1, started + 5)
        assert [(d.value, d.headers, d.delivery_count >= 2) for _, d in got] == [
            (b"v", {"n": "1"}, True)
        ]
        assert time.monotonic() - started >= 0.9
        pending = broker.client.xpending(topic, group)
        assert pending["pending"] == 0  # acked by receive_until
    finally:
        survivor.close()
        crashed.close()  # its heartbeat kept it alive: only the idle rule could claim


def test_a_restarted_consumer_re_reads_its_own_pending_entries_at_once(
    broker: RedisStreamsBroker, redis_url: str, unique: str
) -> None:
    # Given a consumer took 3 entries and stopped without acking (idle claim far away)
    topic, group = f"s.{unique}", f"g.{unique}"
    slow = {**FAST, "claim_idle_seconds": 600.0}
    broker.publish([BrokerMessage(topic=topic, key="k", value=str(i).encode()) for i in range(3)])
    first = RedisStreamsBroker.from_url(redis_url, **slow)
    assert len(first.subscribe(topic, group, "stable").receive(timeout=2)) == 3
    first.close()  # restarted: same name, nothing acknowledged
    # When it restarts with the same stable name
    second = broker.subscribe(topic, group, "stable")
    try:
        # Then it gets them again at once, counted as second deliveries
        got = second.receive(timeout=1)
        assert [(d.value, d.delivery_count) for d in got] == [(b"0", 2), (b"1", 2), (b"2", 2)]
    finally:
        second.close()


def test_a_failed_message_stops_the_later_messages_of_its_key(
    broker: RedisStreamsBroker, streams: redis.Redis, unique: str
) -> None:
    # Given a topic whose key holds a string, so XADD fails with WRONGTYPE
    bad, good = f"bad.{unique}", f"good.{unique}"
    streams.set(bad, "not a stream")
    messages = [
        BrokerMessage(topic=good, key="a", value=b"a0"),
        BrokerMessage(topic=bad, key="a", value=b"a1"),
        BrokerMessage(topic=good, key="a", value=b"a2"),
        BrokerMessage(topic=good, key="b", value=b"b0"),
    ]
    # When they are published in one batch
    results = broker.publish(messages)
    # Then a1 is rejected for good (no XADD can extend a string), a2 is not sent (same key,
    # later: a counted rejection), other keys go through
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, PermanentRejectionError)
    assert type(results[2].error) is MessageRejectedError
    assert "WRONGTYPE" in str(results[1].error)
    assert [fields[b"value"] for _, fields in streams.xrange(good)] == [b"a0", b"b0"]


def test_maxlen_trims_the_stream_approximately(
    redis_url: str, streams: redis.Redis, unique: str
) -> None:
    topic = f"s.{unique}"
    with RedisStreamsBroker.from_url(redis_url, maxlen=10) as trimmed:
        for _ in range(10):
            trimmed.publish([BrokerMessage(topic=topic, key="k", value=b"x")] * 100)
    assert streams.xlen(topic) < 1000


def test_a_decoding_client_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError):
        RedisStreamsBroker.from_client(client)
    client.close()


def test_from_client_leaves_the_callers_client_open(
    redis_url: str, streams: redis.Redis, unique: str
) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    broker = RedisStreamsBroker.from_client(client, **FAST)
    assert broker.publish([BrokerMessage(topic=f"s.{unique}", key="k", value=b"x")])[0].ok
    broker.close()
    assert client.ping()
    client.close()


def test_an_unreachable_server_fails_fast(unique: str) -> None:
    down = RedisStreamsBroker.from_url(f"redis://127.0.0.1:{_closed_port()}/0")
    started = time.monotonic()
    results = down.publish([BrokerMessage(topic=f"s.{unique}", key="k", value=b"x")])
    assert isinstance(results[0].error, BrokerUnavailableError)
    with pytest.raises(BrokerUnavailableError):
        down.ensure_topic(f"s.{unique}", "g")
    # refused at once (a connect timeout of seconds per call would be the defect)
    assert_within(time.monotonic() - started, 0.0, "two calls to a closed port")
    down.close()


def test_a_block_slice_longer_than_the_socket_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        RedisStreamsConfig(url="redis://127.0.0.1:6379/0", block_ms=5000, socket_timeout=5)
    with pytest.raises(ConfigurationError):
        RedisStreamsConfig(maxlen=0)


@pytest.mark.parametrize(
    "script",
    ["return {1, 2}", "return {1, 'err', 5}", "return {7, 'err', 'x'}", "return {1, 'ok', 'x'}"],
    ids=["not-triples", "text-not-a-string", "position-out-of-range", "unknown-status"],
)
def test_an_answer_of_another_shape_reports_the_batch_unavailable(
    redis_url: str, unique: str, streams: redis.Redis, script: str
) -> None:
    """A script under our name that answers otherwise (another version, a bug): what was
    written is unknown, so every message is reported unavailable and sent again later,
    uncounted; nothing raises out of publish."""
    broker = RedisStreamsBroker.from_url(redis_url)
    try:
        broker._publish_script = streams.register_script(script)
        messages = [
            BrokerMessage(topic=f"odd-{unique}", key="k", value=b"{}"),
            BrokerMessage(topic=f"odd-{unique}", key="j", value=b"{}"),
        ]
        results = broker.publish(messages)
    finally:
        broker.close()
    assert [type(r.error) for r in results] == [BrokerUnavailableError] * 2
    assert all("unexpected reply from the publish script" in str(r.error) for r in results)
