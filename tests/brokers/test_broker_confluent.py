"""ConfluentKafkaBroker (librdkafka) on a real Kafka-protocol broker (the session's Tansu).

The conformance suite runs through :class:`TestConfluentKafkaBrokerContract`; the tests below
it cover the librdkafka specifics: the error classes (a message too large, a broker that is
stopped, a broker restarted empty), the per-key waves and the FNV-1a partitioner.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from outboxkit.broker import Broker, BrokerMessage, Subscription
from outboxkit.brokers.confluent import (
    ConfluentKafkaBroker,
    ConfluentKafkaConfig,
    ConfluentKafkaSubscription,
)
from outboxkit.brokers.kafka import go_fnv1a_partitioner
from outboxkit.errors import BrokerUnavailableError, ConfigurationError, MessageRejectedError
from outboxkit.testing.broker_contract import BrokerContract, receive_until
from outboxkit.testing.tansu import TansuServer
from tests.support.timing import assert_within

pytestmark = pytest.mark.kafka


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _fast_failing(bootstrap: str, timeout_ms: int = 3000, **kwargs: object) -> ConfluentKafkaConfig:
    """A config that gives up on an absent broker within about ``timeout_ms``."""
    return ConfluentKafkaConfig.from_bootstrap(
        bootstrap,
        delivery_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        socket_timeout_ms=timeout_ms,
        connection_setup_timeout_ms=timeout_ms,
        **kwargs,
    )


class TestConfluentKafkaBrokerContract(BrokerContract):
    """librdkafka in the conformance suite: group joins take seconds, so deadlines are longer."""

    supports_delivery_count = False  # Kafka does not count deliveries
    reclaims_idle_deliveries = False  # a live member keeps its partitions
    receive_deadline = 20.0
    group_settle_seconds = 120.0  # a deadline: the test goes on once the group has settled
    redelivery_timeout = 25.0
    unavailable_deadline = 12.0

    def group_settled(self, members: Sequence[Subscription]) -> bool:
        # Settled: every member holds partitions and none is held twice (right after a
        # join the old owner may still list partitions it is giving up)
        subscriptions = [m for m in members if isinstance(m, ConfluentKafkaSubscription)]
        assert len(subscriptions) == len(members)
        held = [
            {(tp.topic, tp.partition) for tp in m._consumer.assignment()} for m in subscriptions
        ]
        return all(held) and sum(map(len, held)) == len(set().union(*held))

    def refused_message(self, broker: Broker, topic: str, key: str) -> BrokerMessage:
        # Over message.max.bytes: librdkafka refuses it before sending
        assert isinstance(broker, ConfluentKafkaBroker)
        size = broker.config.message_max_bytes + 1
        return BrokerMessage(topic=topic, key=key, value=b"x" * size)

    @pytest.fixture
    def broker(self, kafka_bootstrap: str) -> Iterator[Broker]:
        with ConfluentKafkaBroker.from_bootstrap(kafka_bootstrap) as instance:
            yield instance

    @pytest.fixture
    def make_broker(self, kafka_bootstrap: str) -> Callable[[], Broker]:
        return lambda: ConfluentKafkaBroker.from_bootstrap(kafka_bootstrap)

    @pytest.fixture
    def unreachable_broker(self) -> Iterator[Broker]:
        with ConfluentKafkaBroker(_fast_failing(f"127.0.0.1:{_closed_port()}")) as instance:
            yield instance


# --------------------------------------------------------------------------- librdkafka-specific


@pytest.fixture
def confluent(kafka_bootstrap: str) -> Iterator[ConfluentKafkaBroker]:
    with ConfluentKafkaBroker.from_bootstrap(kafka_bootstrap) as instance:
        yield instance


@pytest.fixture
def private_tansu() -> Iterator[TansuServer]:
    """A Tansu of this test alone, so it can be stopped and restarted empty."""
    with TansuServer() as server:
        yield server


def _restart_empty(server: TansuServer) -> None:
    """Stop Tansu and start a fresh one (memory storage: no topics, no producer ids) on the
    same port, so clients reconnect to the same address."""
    server.stop(timeout=1.0)
    server.start()


def _read(broker: ConfluentKafkaBroker, topic: str, group: str, count: int) -> list[bytes]:
    """Every value on ``topic`` (expecting ``count``, then checking nothing more arrives)."""
    sub = broker.subscribe(topic, group, "reader")
    try:
        received = receive_until([sub], count, time.monotonic() + 20)
        received += receive_until([sub], 1, time.monotonic() + 1)
    finally:
        sub.close()
    return [d.value for _, d in received]


def test_a_message_over_the_size_limit_is_rejected_and_stops_only_its_key(
    confluent: ConfluentKafkaBroker, unique: str
) -> None:
    # Given a batch where key "a"'s second message is larger than librdkafka accepts
    topic = f"reject.{unique}"
    confluent.ensure_topic(topic)
    huge = b"x" * (confluent.config.message_max_bytes + 1)
    messages = [
        BrokerMessage(topic=topic, key="a", value=b"a1"),
        BrokerMessage(topic=topic, key="b", value=b"b1"),
        BrokerMessage(topic=topic, key="a", value=huge),
        BrokerMessage(topic=topic, key="b", value=b"b2"),
        BrokerMessage(topic=topic, key="a", value=b"a3"),
        BrokerMessage(topic=topic, key="c", value=b"c1"),
    ]
    # When it is published
    results = confluent.publish(messages)
    # Then a2 is rejected (for good), a3 is reported rejected (counted), b and c pass
    assert [r.ok for r in results] == [True, True, False, True, False, True]
    assert isinstance(results[2].error, MessageRejectedError)
    assert "MSG_SIZE_TOO_LARGE" in str(results[2].error)
    assert isinstance(results[4].error, MessageRejectedError)
    assert "earlier message" in str(results[4].error)
    # And a3 was never sent; the producer was kept (a bad message is not a bad producer)
    assert sorted(_read(confluent, topic, f"g.{unique}", 4)) == [b"a1", b"b1", b"b2", b"c1"]
    assert confluent.producer_generation == 1


def test_an_invalid_topic_name_is_rejected(confluent: ConfluentKafkaBroker) -> None:
    results = confluent.publish([BrokerMessage(topic="bad topic/!", key="k", value=b"v")])
    assert isinstance(results[0].error, MessageRejectedError)


def test_per_key_order_holds_across_partitions_within_one_batch(
    confluent: ConfluentKafkaBroker, unique: str
) -> None:
    # Given a 3-partition topic and one batch of 8 keys x 10 interleaved messages
    topic = f"order.{unique}"
    confluent.ensure_topic(topic)
    messages = [
        BrokerMessage(topic=topic, key=f"k{i % 8}", value=str(i).encode()) for i in range(80)
    ]
    # When it is published in one call
    assert all(r.ok for r in confluent.publish(messages))
    # Then the keys spread over several partitions and each key's messages are in order
    sub = confluent.subscribe(topic, f"g.{unique}", "m")
    try:
        received = receive_until([sub], 80, time.monotonic() + 20)
    finally:
        sub.close()
    assert len({d.receipt[0] for _, d in received}) > 1
    per_key: dict[str, list[int]] = {}
    for _, delivery in received:
        per_key.setdefault(delivery.key, []).append(int(delivery.value))
    assert sorted(per_key) == [f"k{i}" for i in range(8)]
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs) and len(seqs) == 10, key


def test_a_stopped_broker_makes_publish_report_unavailable_within_the_deadline(
    private_tansu: TansuServer, unique: str
) -> None:
    # Given a broker object that has published successfully
    config = _fast_failing(private_tansu.bootstrap, 2000)
    topic = f"down.{unique}"
    with ConfluentKafkaBroker(config) as broker:
        broker.ensure_topic(topic)
        assert all(r.ok for r in broker.publish([BrokerMessage(topic=topic, key="k", value=b"1")]))
        # When the Kafka server goes away
        private_tansu.stop(timeout=1.0)
        started = time.monotonic()
        results = broker.publish(
            [BrokerMessage(topic=topic, key=f"k{i % 2}", value=b"2") for i in range(4)]
        )
        elapsed = time.monotonic() - started
    # Then every message is reported unavailable (uncounted) within the delivery bound
    assert all(isinstance(r.error, BrokerUnavailableError) for r in results), results
    assert "not sent" in str(results[2].error)  # k0's second message waited for its first
    assert_within(elapsed, config.flush_timeout, "publish to a stopped broker")


def test_a_broker_restarted_empty_is_unavailable_once_then_the_same_object_resumes(
    private_tansu: TansuServer, unique: str
) -> None:
    # Given a broker object whose idempotent producer has a producer id on the server
    topic = f"restart.{unique}"
    config = _fast_failing(private_tansu.bootstrap, 3000)
    with ConfluentKafkaBroker(config) as broker:
        broker.ensure_topic(topic)
        assert all(r.ok for r in broker.publish([BrokerMessage(topic=topic, key="k", value=b"1")]))
        assert broker.producer_generation == 1
        # When the server restarts empty (topics and producer ids gone) and the topic is back
        _restart_empty(private_tansu)
        broker.ensure_topic(topic)
        # Then publishing reports the batch unavailable (uncounted), within the bound ...
        started = time.monotonic()
        lost = broker.publish([BrokerMessage(topic=topic, key="k", value=b"2")])
        assert_within(time.monotonic() - started, config.flush_timeout, "publish, broker gone")
        assert isinstance(lost[0].error, BrokerUnavailableError), lost
        # ... and the same broker object, with a new producer, publishes again
        deadline = time.monotonic() + 20
        resumed = broker.publish([BrokerMessage(topic=topic, key="k", value=b"3")])
        while not resumed[0].ok and time.monotonic() < deadline:
            resumed = broker.publish([BrokerMessage(topic=topic, key="k", value=b"3")])
        assert resumed[0].ok, resumed
        assert broker.producer_generation >= 2
        assert _read(broker, topic, f"g.{unique}", 1) == [b"3"]


def test_receive_reports_a_stopped_broker_as_unavailable(
    private_tansu: TansuServer, unique: str
) -> None:
    # Given a member that joined its group and received a message
    topic = f"rdown.{unique}"
    with ConfluentKafkaBroker(_fast_failing(private_tansu.bootstrap)) as broker:
        broker.ensure_topic(topic)
        assert broker.publish([BrokerMessage(topic=topic, key="k", value=b"v")])[0].ok
        sub = broker.subscribe(topic, f"g.{unique}", "m")
        try:
            assert len(receive_until([sub], 1, time.monotonic() + 20)) == 1
            # When the server goes away
            private_tansu.stop(timeout=1.0)
            # Then receive raises BrokerUnavailableError within the bound
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError):
                while time.monotonic() - started < 15:
                    sub.receive(timeout=0.5)
        finally:
            sub.close()


def test_an_ack_after_a_rebalance_reassigned_the_partition_is_not_committed(
    confluent: ConfluentKafkaBroker, kafka_bootstrap: str, unique: str
) -> None:
    # Given a member holding an unacknowledged delivery
    topic = f"epoch.{unique}"
    group = f"g.{unique}"
    confluent.ensure_topic(topic)
    assert confluent.publish([BrokerMessage(topic=topic, key="k", value=b"v")])[0].ok
    with ConfluentKafkaBroker.from_bootstrap(kafka_bootstrap) as other:
        first = confluent.subscribe(topic, group, "member-1")
        second = None
        assert isinstance(first, ConfluentKafkaSubscription)
        try:
            [(_, delivery)] = receive_until([first], 1, time.monotonic() + 20, ack=False)
            partition, _, epoch = delivery.receipt
            second = other.subscribe(topic, group, "member-2")
            assert isinstance(second, ConfluentKafkaSubscription)
            # When a second member joins and the group rebalances (eager: every partition
            # is revoked and assigned again, so the first member's epoch moves on)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                first._epochs.get(partition) == epoch
                or len(first._epochs) + len(second._epochs) < 3
            ):
                first.receive(timeout=0.2)
                second.receive(timeout=0.2)
            assert first._epochs.get(partition) != epoch, "no rebalance happened"
            # And the first member acknowledges its old delivery
            first.ack(delivery)
        finally:
            first.close()
            if second is not None:
                second.close()
    # Then the offset was not committed: the group reads the message again
    again = confluent.subscribe(topic, group, "member-3")
    try:
        assert [d.value for _, d in receive_until([again], 1, time.monotonic() + 20)] == [b"v"]
    finally:
        again.close()


def test_librdkafka_fnv1a_partitioner_matches_kafka_go_hash_balancer(
    kafka_bootstrap: str, unique: str
) -> None:
    # Given topics of several partition counts and a producer configured with "go-fnv1a"
    counts = (1, 2, 3, 5, 7, 12)
    keys = [f"conversation-{i}" for i in range(150)]
    keys += ["a", "", "clé-ключ-✓", uuid.uuid4().hex, "x" * 300]
    config = ConfluentKafkaConfig.from_bootstrap(kafka_bootstrap, partitioner="go-fnv1a")
    placed: dict[tuple[int, str], int] = {}
    with ConfluentKafkaBroker(config) as broker:
        for count in counts:
            topic = f"fnv.{unique}.{count}"
            with ConfluentKafkaBroker(
                ConfluentKafkaConfig.from_bootstrap(kafka_bootstrap, num_partitions=count)
            ) as creator:
                creator.ensure_topic(topic)
            # When one message per key is published
            messages = [BrokerMessage(topic=topic, key=k, value=b"v") for k in keys]
            assert all(r.ok for r in broker.publish(messages))
            sub = broker.subscribe(topic, f"g.{unique}.{count}", "m")
            try:
                received = receive_until([sub], len(keys), time.monotonic() + 20, max_messages=500)
            finally:
                sub.close()
            placed.update({(count, d.key): d.receipt[0] for _, d in received})
    # Then each key sits where kafka-go's Hash balancer (|int32(fnv1a) % n|) puts it
    expected = {
        (count, key): go_fnv1a_partitioner(key.encode(), list(range(count)), [])
        for count in counts
        for key in keys
    }
    assert placed == expected


def test_config_builds_librdkafka_dicts_with_our_bounds_and_pass_through_options() -> None:
    config = ConfluentKafkaConfig.from_bootstrap(
        " h1:9092, h2:9093 ,",
        client_id="svc",
        partitioner="go-fnv1a",
        common_options={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
        producer_options={"compression.type": "lz4"},
        consumer_options={"fetch.min.bytes": 2},
        admin_options={"client.id": "admin-x"},
        static_membership=True,
    )
    producer = config.producer_config()
    consumer = config.consumer_config(group="grp", consumer_name="worker-1")
    admin = config.admin_config()
    assert producer["bootstrap.servers"] == "h1:9092,h2:9093"
    for settings in (producer, consumer, admin):
        assert settings["security.protocol"] == "SASL_SSL"
        assert settings["socket.timeout.ms"] == config.socket_timeout_ms
    assert producer["partitioner"] == "fnv1a"
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert producer["message.timeout.ms"] == 20_000
    assert producer["compression.type"] == "lz4" and "fetch.min.bytes" not in producer
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["group.id"] == "grp" and consumer["group.instance.id"] == "worker-1"
    assert consumer["client.id"] == "svc-worker-1" and consumer["fetch.min.bytes"] == 2
    assert consumer["session.timeout.ms"] == 6000 and consumer["heartbeat.interval.ms"] == 1000
    assert admin["client.id"] == "admin-x"
    assert ConfluentKafkaConfig.from_bootstrap("k:1").producer_config()["partitioner"] == (
        "murmur2_random"
    )


def test_config_refuses_settings_that_would_break_the_guarantees() -> None:
    with pytest.raises(ConfigurationError, match=r"enable\.auto\.commit"):
        ConfluentKafkaConfig(bootstrap_servers="k:1", consumer_options={"enable.auto.commit": True})
    with pytest.raises(ConfigurationError):
        ConfluentKafkaConfig(bootstrap_servers="k:1", max_in_flight_requests_per_connection=6)
    with pytest.raises(ConfigurationError):
        ConfluentKafkaConfig(bootstrap_servers="k:1", heartbeat_interval_ms=6000)
    with pytest.raises(ValueError):
        ConfluentKafkaConfig(bootstrap_servers="k:1", partitioner="murmur2")


def test_unknown_librdkafka_settings_are_configuration_errors() -> None:
    config = ConfluentKafkaConfig(bootstrap_servers="k:1", producer_options={"no.such": 1})
    with (
        ConfluentKafkaBroker(config) as broker,
        pytest.raises(ConfigurationError, match=r"no\.such"),
    ):
        broker.publish([BrokerMessage(topic="t", key="k", value=b"v")])


def test_a_confluent_url_gives_a_librdkafka_broker() -> None:
    from outboxkit.brokers.urls import broker_from_url

    with broker_from_url("confluent://h1:9092,h2:9093/") as broker:
        assert isinstance(broker, ConfluentKafkaBroker)
        assert broker.config.bootstrap_servers == "h1:9092,h2:9093"
    with pytest.raises(ConfigurationError):
        broker_from_url("confluent://")
