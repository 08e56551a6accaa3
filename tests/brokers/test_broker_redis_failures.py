"""The Redis Streams broker on private servers: what it makes of failures and restarts
(how it classifies what can go wrong on send), and how many round trips a receive costs.

Each test that breaks a server (fills it, demotes it, restarts it empty) starts its own
``redis-server`` on a free loopback port: the shared Redis is never touched that way. The
table being proven is the docstring of ``outboxkit.brokers.redis_streams.errors``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import redis

from outboxkit.broker import BrokerMessage, Delivery, SendResult, Subscription
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.brokers.redis_streams.errors import send_error
from outboxkit.errors import (
    BrokerUnavailableError,
    MessageRejectedError,
    PermanentRejectionError,
)
from outboxkit.testing.redis_server import RedisServer
from tests.support.timing import assert_within

pytestmark = pytest.mark.redis

FAST = {"claim_idle_seconds": 1.0, "claim_interval_seconds": 0.3, "block_ms": 200}


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """``redis_server(*args)``: a private, started redis-server, stopped after the test."""
    started: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(args=args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def own_broker() -> Iterator[Callable[[RedisServer], RedisStreamsBroker]]:
    """``own_broker(server)``: a broker on a private server, closed after the test."""
    created: list[RedisStreamsBroker] = []

    def new(server: RedisServer, **settings: float) -> RedisStreamsBroker:
        broker = RedisStreamsBroker.from_url(server.url, **{**FAST, **settings})
        created.append(broker)
        return broker

    yield new
    for broker in created:
        broker.close()


def _messages(topic: str, *keys: str) -> list[BrokerMessage]:
    return [BrokerMessage(topic=topic, key=key, value=key.encode()) for key in keys]


def _errors(results: Sequence[SendResult]) -> list[type | None]:
    return [type(r.error) if r.error is not None else None for r in results]


def _publish_until_ok(broker: RedisStreamsBroker, message: BrokerMessage) -> None:
    deadline = time.monotonic() + 15
    while True:
        result = broker.publish([message])[0]
        if result.ok:
            return
        assert isinstance(result.error, BrokerUnavailableError), result.error
        assert time.monotonic() < deadline, f"publishing never resumed: {result.error}"
        time.sleep(0.1)


# ---------------------------------------------------------------------- the broker is unwell
def test_a_full_server_is_unavailable_and_publishing_resumes_once_memory_is_freed(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[[RedisServer], RedisStreamsBroker],
) -> None:
    # Given a server at its maxmemory with noeviction
    server = redis_server("--maxmemory-policy", "noeviction")
    admin = redis.Redis.from_url(server.url)
    broker = own_broker(server)
    assert broker.publish(_messages("s", "a"))[0].ok
    admin.set("filler", b"x" * 2_000_000)
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 100_000)
    # When a batch is published
    results = broker.publish(_messages("s", "a", "b"))
    # Then the broker is unwell (uncounted), not the messages
    assert _errors(results) == [BrokerUnavailableError, BrokerUnavailableError]
    assert "OOM" in str(results[0].error)
    # And once memory is freed the same broker publishes again
    admin.delete("filler")
    assert broker.publish(_messages("s", "c"))[0].ok
    assert admin.xlen("s") == 2
    admin.close()


def test_a_read_only_replica_is_unavailable(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[[RedisServer], RedisStreamsBroker],
) -> None:
    # Given a broker pointed at a replica (a failover in progress, a stale DNS entry)
    primary = redis_server()
    replica = redis_server("--replicaof", "127.0.0.1", str(primary.port))
    # When it publishes
    results = own_broker(replica).publish(_messages("s", "a", "b"))
    # Then the broker is unavailable: the writes belong elsewhere
    assert _errors(results) == [BrokerUnavailableError, BrokerUnavailableError]
    assert "READONLY" in str(results[0].error)


def test_a_server_busy_with_a_long_script_is_unavailable(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[[RedisServer], RedisStreamsBroker],
) -> None:
    # Given a server stuck in someone else's long script: it refuses our whole script
    server = redis_server("--busy-reply-threshold", "50")
    broker = own_broker(server)
    assert broker.publish(_messages("s", "a"))[0].ok
    blocker = redis.Redis.from_url(server.url, socket_timeout=30)
    stuck = threading.Thread(target=_run_until_killed, args=(blocker,))
    stuck.start()
    admin = redis.Redis.from_url(server.url)
    try:
        _wait_until_busy(admin)
        # When a batch is published
        results = broker.publish(_messages("s", "a", "b"))
        # Then it is the broker that is unwell
        assert _errors(results) == [BrokerUnavailableError, BrokerUnavailableError]
        assert "BUSY" in str(results[0].error)
    finally:
        admin.script_kill()
        stuck.join(10)
        blocker.close()
        admin.close()
    assert not stuck.is_alive(), "the busy script was never killed"
    assert broker.publish(_messages("s", "c"))[0].ok


def _run_until_killed(client: redis.Redis) -> None:
    # Ends with "ERR ... Script killed by user with SCRIPT KILL"
    with contextlib.suppress(redis.exceptions.ResponseError):
        client.eval("while true do end", 0)


def _wait_until_busy(admin: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            admin.ping()
        except redis.exceptions.ResponseError as exc:
            if "BUSY" in str(exc):
                return
            raise
        time.sleep(0.05)
    pytest.fail("the long script never made the server busy")


def test_a_refused_connection_is_unavailable(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[[RedisServer], RedisStreamsBroker],
) -> None:
    # Given a broker whose server went away
    server = redis_server()
    broker = own_broker(server)
    assert broker.publish(_messages("s", "a"))[0].ok
    server.stop()
    # When it publishes, then every message is reported unavailable (nothing was written)
    assert _errors(broker.publish(_messages("s", "a", "b"))) == [
        BrokerUnavailableError,
        BrokerUnavailableError,
    ]


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.InvalidResponse("Protocol Error: b'x'"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_whole_batch_errors_that_redis_py_strips_of_their_code_are_still_unavailable(
    error: redis.exceptions.RedisError,
) -> None:
    # redis-py turns "-READONLY You can't ..." into ReadOnlyError("You can't ..."): the
    # class, not the text, says the server is unwell (these cannot be provoked on demand
    # for a whole script on Redis 7, whose unflagged scripts fail per command instead)
    assert isinstance(send_error(error, "a batch"), BrokerUnavailableError)


# ---------------------------------------------------------------------- the message is bad
def test_an_acl_denied_topic_is_rejected(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Given a user whose ACL allows only the keys "allowed:*"
    server = redis_server()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+pw"], keys=["allowed:*"], commands=["+@all"]
    )
    broker = RedisStreamsBroker.from_url(f"redis://limited:pw@127.0.0.1:{server.port}/0", **FAST)
    try:
        # When it publishes to a topic outside them
        results = broker.publish(_messages("denied", "a"))
        # Then the message is rejected (a retry cannot fix it), and the allowed one goes
        assert _errors(results) == [MessageRejectedError]
        assert "NOPERM" in str(results[0].error) or "permission" in str(results[0].error)
        assert broker.publish(_messages("allowed:s", "a"))[0].ok
    finally:
        broker.close()
        admin.close()


def test_a_message_field_redis_cannot_carry_is_rejected_alone(redis_url: str, unique: str) -> None:
    # Given a batch where one message has a header that is not text
    topic = f"s.{unique}"
    bad = BrokerMessage(topic=topic, key="a", value=b"a0", headers={"n": 1})  # type: ignore[dict-item]
    messages = [bad, *_messages(topic, "a", "b")]
    with RedisStreamsBroker.from_url(redis_url) as broker:
        # When it is published
        results = broker.publish(messages)
    client = redis.Redis.from_url(redis_url)
    try:
        # Then that message is rejected for good, the later one of its key is not sent (a
        # counted rejection: nothing is wrong with it), others go
        assert _errors(results) == [PermanentRejectionError, MessageRejectedError, None]
        assert [fields[b"key"] for _, fields in client.xrange(topic)] == [b"b"]
    finally:
        client.delete(topic)
        client.close()


# ---------------------------------------------------------------------- restarts
def test_an_empty_script_cache_just_works(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[[RedisServer], RedisStreamsBroker],
) -> None:
    server = redis_server()
    broker = own_broker(server)
    assert broker.publish(_messages("s", "a"))[0].ok
    admin = redis.Redis.from_url(server.url)
    admin.script_flush()  # what a restart does to the script cache
    assert broker.publish(_messages("s", "b"))[0].ok  # NOSCRIPT never surfaces
    assert admin.xlen("s") == 2
    admin.close()


def test_a_server_restarted_empty_under_a_live_broker_and_subscription(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[[RedisServer], RedisStreamsBroker],
) -> None:
    # Given a live broker and subscription that already exchanged a message
    server = redis_server()
    broker = own_broker(server)
    subscription = broker.subscribe("s", "g", "member")
    assert broker.publish(_messages("s", "before"))[0].ok
    first = _receive_until(subscription, lambda d: d.key == "before")
    subscription.ack(first)
    # When the server restarts and comes back empty (no stream, no group, no scripts)
    server.restart()
    # Then the same broker publishes again
    _publish_until_ok(broker, BrokerMessage(topic="s", key="after", value=b"after"))
    # And the same subscription recreates its group and receives what came afterwards
    after = _receive_until(subscription, lambda d: d.key == "after")
    assert after.value == b"after"
    subscription.ack(after)
    admin = redis.Redis.from_url(server.url)
    assert [group["name"] for group in admin.xinfo_groups("s")] == [b"g"]
    assert admin.xpending("s", "g")["pending"] == 0
    admin.close()


def _receive_until(subscription: Subscription, wanted: Callable[[Delivery], bool]) -> Delivery:
    deadline = time.monotonic() + 15
    outages: list[str] = []
    while time.monotonic() < deadline:
        try:
            batch = subscription.receive(timeout=0.5)
        except BrokerUnavailableError as exc:  # the engine would pause and go on
            outages.append(str(exc))
            time.sleep(0.1)
            continue
        for delivery in batch:
            if wanted(delivery):
                return delivery
    pytest.fail(f"nothing wanted arrived; outages seen: {outages[-3:]}")


# ---------------------------------------------------------------------- round trips
def _commands(admin: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started, without our own ``INFO``."""
    stats = admin.info("commandstats")
    return {name: int(row["calls"]) for name, row in stats.items() if name != "cmdstat_info"}


def _spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def test_a_receive_with_entries_waiting_costs_one_read_and_a_batch_one_ack(
    redis_server: Callable[..., RedisServer],
    own_broker: Callable[..., RedisStreamsBroker],
) -> None:
    # Given a member past its first sweep, with sweeps and heartbeats far away
    server = redis_server()
    broker = own_broker(server, claim_interval_seconds=600.0, member_ttl_seconds=600.0)
    subscription = broker.subscribe("s", "g", "m")
    assert subscription.receive(timeout=0) == []
    broker.publish([BrokerMessage(topic="s", key=f"k{i}", value=b"v") for i in range(30)])
    admin = redis.Redis.from_url(server.url)
    before = _commands(admin)
    # When it receives three batches that are already waiting, with a long timeout
    started = time.monotonic()
    batches = [subscription.receive(timeout=30, max_messages=10) for _ in range(3)]
    elapsed = time.monotonic() - started
    subscription.ack_many([d for batch in batches for d in batch])
    # Then each receive returned at once, with one XREADGROUP each: no XPENDING, no
    # heartbeat, no sweep on the way; and the whole batch took one XACK
    assert [len(batch) for batch in batches] == [10, 10, 10]
    assert_within(elapsed, 0.0, "three receives of waiting entries")  # not their 30 s
    assert _spent(before, _commands(admin)) == {"cmdstat_xreadgroup": 3, "cmdstat_xack": 1}
    assert admin.xpending("s", "g")["pending"] == 0
    admin.close()
