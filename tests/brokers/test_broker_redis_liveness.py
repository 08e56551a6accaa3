"""Members of a Redis Streams group that die are noticed within seconds, not minutes.

``claim_idle_seconds`` is 600 in these tests: whatever moves within a few seconds moved
because of the liveness signal, never because of the idle rule.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from outboxkit.broker import BrokerMessage, Subscription
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.testing.broker_contract import receive_until
from tests.support.paths import ROOT

pytestmark = pytest.mark.redis

#: Liveness within seconds (with room for a late heartbeat on a busy machine); the idle
#: rule far away.
LIVENESS = {
    "member_ttl_seconds": 1.5,
    "claim_idle_seconds": 600.0,
    "claim_interval_seconds": 0.2,
    "block_ms": 100,
}
#: Generous: a dead member is noticed after its TTL plus one sweep (about 2 s here).
TAKEOVER_DEADLINE = 15.0
#: How long a live member is watched for being robbed: twice its TTL.
WATCH_SECONDS = 3.0


@pytest.fixture
def streams(redis_url: str, unique: str) -> Iterator[redis.Redis]:
    """A plain client; deletes every key containing ``unique`` (streams, liveness keys)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"*{unique}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_broker(redis_url: str, streams: redis.Redis) -> Iterator[Callable[[], RedisStreamsBroker]]:
    created: list[RedisStreamsBroker] = []

    def new(**settings: float) -> RedisStreamsBroker:
        broker = RedisStreamsBroker.from_url(redis_url, **{**LIVENESS, **settings})
        created.append(broker)
        return broker

    yield new
    for broker in created:
        broker.close()


@pytest.fixture
def member_process(redis_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``member_process(stream, group, name, count)``: a member in its own process that took
    ``count`` entries and holds them unacknowledged; killed after the test at the latest."""
    started: list[subprocess.Popen[str]] = []

    def start(stream: str, group: str, name: str, count: int) -> subprocess.Popen[str]:
        ttl = str(LIVENESS["member_ttl_seconds"])
        args = [redis_url, stream, group, name, str(count), ttl]
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.redis_member", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # pytest-timeout guards a member that hangs
        assert line.strip() == f"took {count}", f"member process said {line!r}"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _consumers(client: redis.Redis, stream: str, group: str) -> dict[str, int]:
    """Member name -> pending count, from ``XINFO CONSUMERS``."""
    return {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, group)}


def _publish(broker: RedisStreamsBroker, stream: str, count: int) -> None:
    messages = [
        BrokerMessage(topic=stream, key=f"k{i}", value=str(i).encode()) for i in range(count)
    ]
    assert all(result.ok for result in broker.publish(messages))


def _poll_until(
    subscriptions: list[Subscription], condition: Callable[[], bool], seconds: float
) -> bool:
    """Keep ``subscriptions`` receiving (their sweeps run on receive) until ``condition``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        for subscription in subscriptions:
            for delivery in subscription.receive(timeout=0.1):
                subscription.ack(delivery)
    return condition()


def test_a_killed_members_entries_go_to_another_member_within_seconds_and_it_leaves_the_group(
    make_broker: Callable[..., RedisStreamsBroker],
    member_process: Callable[..., subprocess.Popen[str]],
    streams: redis.Redis,
    unique: str,
) -> None:
    # Given a member in another process holding 3 unacknowledged entries
    stream, group = f"s.{unique}", f"g.{unique}"
    broker = make_broker()
    broker.ensure_topic(stream, group)
    _publish(broker, stream, 3)
    victim = member_process(stream, group, "worker-1", 3)
    survivor = broker.subscribe(stream, group, "worker-2")
    # While it lives (and does not ack, like a slow handler), nobody robs it
    assert receive_until([survivor], 1, time.monotonic() + WATCH_SECONDS) == []
    assert _consumers(streams, stream, group)["worker-1"] == 3
    # When it is killed with SIGKILL: no close, no goodbye
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    # Then its entries reach the survivor within seconds, counted as redeliveries
    got = receive_until([survivor], 3, killed_at + TAKEOVER_DEADLINE)
    assert sorted(d.value for _, d in got) == [b"0", b"1", b"2"]
    assert all(d.delivery_count == 2 for _, d in got), [d.delivery_count for _, d in got]
    assert time.monotonic() - killed_at < LIVENESS["claim_idle_seconds"] / 10
    # And the dead member, its pending list now empty, is removed from the group
    assert _poll_until(
        [survivor], lambda: "worker-1" not in _consumers(streams, stream, group), 10
    ), _consumers(streams, stream, group)
    assert _consumers(streams, stream, group) == {"worker-2": 0}


def test_a_live_member_with_a_slow_handler_is_not_robbed(
    make_broker: Callable[..., RedisStreamsBroker], streams: redis.Redis, unique: str
) -> None:
    # Given a member in its own broker that took entries and is busy for a long time: it
    # neither receives nor acks, only its broker's heartbeat thread runs
    stream, group = f"s.{unique}", f"g.{unique}"
    publisher = make_broker()
    publisher.ensure_topic(stream, group)
    _publish(publisher, stream, 3)
    slow = make_broker().subscribe(stream, group, "slow")
    assert len(slow.receive(timeout=2)) == 3
    survivor = make_broker().subscribe(stream, group, "survivor")
    # When another member sweeps for many TTLs
    got = receive_until([survivor], 1, time.monotonic() + WATCH_SECONDS)
    # Then it takes nothing, and the slow member keeps its entries and its place
    assert got == []
    assert _consumers(streams, stream, group) == {"slow": 3, "survivor": 0}


def test_a_closed_member_hands_its_entries_over_at_once(
    make_broker: Callable[..., RedisStreamsBroker], streams: redis.Redis, unique: str
) -> None:
    # Given a member with a long TTL that took entries
    stream, group = f"s.{unique}", f"g.{unique}"
    leaving_broker = make_broker(member_ttl_seconds=600.0)
    leaving_broker.ensure_topic(stream, group)
    _publish(leaving_broker, stream, 2)
    leaving = leaving_broker.subscribe(stream, group, "leaving")
    assert len(leaving.receive(timeout=2)) == 2
    survivor = make_broker().subscribe(stream, group, "survivor")
    # When it closes without acknowledging (an engine stopping mid-batch)
    leaving.close()
    # Then the other member gets them long before the TTL or the idle time
    got = receive_until([survivor], 2, time.monotonic() + TAKEOVER_DEADLINE)
    assert sorted(d.value for _, d in got) == [b"0", b"1"]
    assert _poll_until([survivor], lambda: "leaving" not in _consumers(streams, stream, group), 10)


def test_a_taken_over_member_is_logged_by_its_name_as_text(
    make_broker: Callable[..., RedisStreamsBroker],
    streams: redis.Redis,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a member that took entries and closed without acknowledging them
    stream, group = f"s.{unique}", f"g.{unique}"
    leaving_broker = make_broker(member_ttl_seconds=600.0)
    leaving_broker.ensure_topic(stream, group)
    _publish(leaving_broker, stream, 2)
    leaving = leaving_broker.subscribe(stream, group, "worker-7")
    assert len(leaving.receive(timeout=2)) == 2
    leaving.close()
    survivor = make_broker().subscribe(stream, group, "survivor")
    # When another member takes its entries over and removes it
    with caplog.at_level(logging.INFO, logger="outboxkit.brokers.redis_streams"):
        assert len(receive_until([survivor], 2, time.monotonic() + TAKEOVER_DEADLINE)) == 2
        assert _poll_until(
            [survivor], lambda: "worker-7" not in _consumers(streams, stream, group), 10
        )
    # Then the log names the member as an operator named it, not as Python bytes
    lines = [r.getMessage() for r in caplog.records if "dead member" in r.getMessage()]
    assert f"survivor took over 2 pending entries of dead member worker-7 of {stream}/{group}" in (
        lines
    )
    assert f"survivor removed dead member worker-7 from {stream}/{group}" in lines
    assert not [line for line in lines if "b'" in line], lines


def test_a_member_without_a_liveness_key_is_left_to_the_idle_rule(
    make_broker: Callable[..., RedisStreamsBroker], streams: redis.Redis, unique: str
) -> None:
    # Given a consumer that never kept a liveness key (an older outboxkit, a Go consumer)
    # holding entries, and a member with an idle rule far away
    stream, group = f"s.{unique}", f"g.{unique}"
    broker = make_broker()
    broker.ensure_topic(stream, group)
    _publish(broker, stream, 2)
    assert streams.xreadgroup(group, "legacy", {stream: ">"})
    survivor = broker.subscribe(stream, group, "survivor")
    # When the member sweeps for many TTLs, then the legacy consumer is not treated as dead
    assert receive_until([survivor], 1, time.monotonic() + WATCH_SECONDS) == []
    assert _consumers(streams, stream, group)["legacy"] == 2


def test_an_idle_member_without_a_liveness_key_and_nothing_pending_is_removed(
    make_broker: Callable[..., RedisStreamsBroker], streams: redis.Redis, unique: str
) -> None:
    # Given a legacy consumer that held entries, idle past the idle rule (1 s here)
    stream, group = f"s.{unique}", f"g.{unique}"
    broker = make_broker(claim_idle_seconds=1.0)
    broker.ensure_topic(stream, group)
    _publish(broker, stream, 2)
    assert streams.xreadgroup(group, "legacy", {stream: ">"})
    survivor = broker.subscribe(stream, group, "survivor")
    # When the member's sweeps run: the idle rule claims its entries (XAUTOCLAIM), and
    # then the idle consumer with an empty pending list leaves the group
    got = receive_until([survivor], 2, time.monotonic() + TAKEOVER_DEADLINE)
    assert sorted(d.value for _, d in got) == [b"0", b"1"]
    assert _poll_until(
        [survivor], lambda: "legacy" not in _consumers(streams, stream, group), 10
    ), _consumers(streams, stream, group)


def test_liveness_keys_are_deleted_when_the_broker_closes(
    make_broker: Callable[..., RedisStreamsBroker], streams: redis.Redis, unique: str
) -> None:
    stream, group = f"s.{unique}", f"g.{unique}"
    broker = make_broker(member_ttl_seconds=600.0)
    broker.subscribe(stream, group, "m")
    alive = [key for key in streams.scan_iter(match=f"outboxkit:alive:*{unique}*")]
    assert len(alive) == 1
    assert 0 < streams.pttl(alive[0]) <= 600_000
    broker.close()
    assert list(streams.scan_iter(match=f"outboxkit:alive:*{unique}*")) == []
