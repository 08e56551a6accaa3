"""KafkaBroker on a real Kafka-protocol broker (Tansu, or OUTBOXKIT_TEST_KAFKA_BOOTSTRAP).

The conformance suite runs through :class:`TestKafkaBrokerContract`; the tests below it cover
what only Kafka has: partitions, the per-key wave publishing, config splitting and the
pass-through of kafka-python settings.
"""

from __future__ import annotations

import gc
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import attrs
import pytest

from outboxkit.broker import Broker, BrokerMessage, Subscription
from outboxkit.brokers.kafka import (
    KafkaBroker,
    KafkaConfig,
    fnv1a_32,
    go_fnv1a_partitioner,
)
from outboxkit.brokers.kafka.subscription import KafkaSubscription
from outboxkit.errors import BrokerUnavailableError, ConfigurationError, MessageRejectedError
from outboxkit.testing.broker_contract import BrokerContract, receive_until
from tests.support.timing import assert_within

pytestmark = pytest.mark.kafka


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _unreachable_config(timeout_ms: int = 3000) -> KafkaConfig:
    return KafkaConfig.from_bootstrap(
        f"127.0.0.1:{_closed_port()}",
        bootstrap_timeout_ms=timeout_ms,
        max_block_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )


def _collect_leaked_sockets() -> None:
    """Reap the sockets kafka-python 3.0 leaks when a client fails to bootstrap.

    Its constructor raises without closing the refused socket; left to the garbage collector,
    the ResourceWarning would fire (as an error) in whichever test runs next.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


class TestKafkaBrokerContract(BrokerContract):
    """Kafka in the conformance suite: group joins take seconds, so the deadlines are longer."""

    supports_delivery_count = False  # Kafka does not count deliveries
    reclaims_idle_deliveries = False  # a live member keeps its partitions
    receive_deadline = 20.0
    # A deadline, not a wait: a two-member join took 3-40 s on Tansu here (it repeats its
    # join rounds), and a member whose group does not settle rejoins after
    # KafkaConfig.group_settle_timeout_ms (30 s, then longer): room for two such rounds.
    group_settle_seconds = 120.0
    redelivery_timeout = 25.0
    unavailable_deadline = 12.0

    def refused_message(self, broker: Broker, topic: str, key: str) -> BrokerMessage:
        # Over the producer's max_request_size: kafka-python refuses it before sending
        assert isinstance(broker, KafkaBroker)
        return BrokerMessage(
            topic=topic, key=key, value=b"x" * (broker.config.max_request_size + 1)
        )

    # kafka-python 3.0 leaks the refused socket of a failed bootstrap (see
    # _collect_leaked_sockets): the two outage tests run with ResourceWarning ignored.
    @pytest.mark.filterwarnings("ignore::ResourceWarning")
    def test_publish_to_an_unreachable_broker_reports_unavailable(
        self, request: pytest.FixtureRequest, unique: str
    ) -> None:
        super().test_publish_to_an_unreachable_broker_reports_unavailable(request, unique)

    @pytest.mark.filterwarnings("ignore::ResourceWarning")
    def test_receive_from_an_unreachable_broker_raises_unavailable(
        self, request: pytest.FixtureRequest, unique: str
    ) -> None:
        super().test_receive_from_an_unreachable_broker_raises_unavailable(request, unique)

    def group_settled(self, members: Sequence[Subscription]) -> bool:
        # Settled: every member in a stable group, each holding partitions, none held twice
        # (right after a join the old owner may still list partitions it is giving up).
        # Every test's group id is new (it contains ``unique``): Tansu never sees a group a
        # killed consumer of an earlier test left behind.
        subscriptions = [m for m in members if isinstance(m, KafkaSubscription)]
        assert len(subscriptions) == len(members)
        held = [set(m._consumer.assignment()) for m in subscriptions]
        stable = all(m._unsettled_reason() is None for m in subscriptions)
        return stable and all(held) and sum(map(len, held)) == len(set().union(*held))

    @pytest.fixture
    def broker(self, kafka_bootstrap: str) -> Iterator[Broker]:
        with KafkaBroker(KafkaConfig.from_bootstrap(kafka_bootstrap)) as instance:
            yield instance

    @pytest.fixture
    def make_broker(self, kafka_bootstrap: str) -> Callable[[], Broker]:
        return lambda: KafkaBroker(KafkaConfig.from_bootstrap(kafka_bootstrap))

    @pytest.fixture
    def unreachable_broker(self) -> Iterator[Broker]:
        with KafkaBroker(_unreachable_config()) as instance:
            yield instance
        _collect_leaked_sockets()


# --------------------------------------------------------------------------- Kafka-specific


@pytest.fixture
def kafka(kafka_bootstrap: str) -> Iterator[KafkaBroker]:
    with KafkaBroker.from_bootstrap(kafka_bootstrap) as instance:
        yield instance


def test_per_key_order_holds_across_partitions_within_one_batch(
    kafka: KafkaBroker, unique: str
) -> None:
    # Given a 3-partition topic and one batch of 8 keys x 10 interleaved messages
    topic = f"order.{unique}"
    kafka.ensure_topic(topic)
    messages = [
        BrokerMessage(topic=topic, key=f"k{i % 8}", value=str(i).encode(), headers={"seq": str(i)})
        for i in range(80)
    ]
    # When it is published in one call
    results = kafka.publish(messages)
    assert all(r.ok for r in results)
    # Then the keys spread over several partitions and each key's messages are in order
    sub = kafka.subscribe(topic, f"g.{unique}", "m")
    try:
        received = receive_until([sub], 80, time.monotonic() + 20)
    finally:
        sub.close()
    partitions = {d.receipt[0] for _, d in received}
    assert len(partitions) > 1
    per_key: dict[str, list[int]] = {}
    for _, delivery in received:
        per_key.setdefault(delivery.key, []).append(int(delivery.value))
    assert sorted(per_key) == [f"k{i}" for i in range(8)]
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs) and len(seqs) == 10, key


def test_a_rejected_message_stops_the_rest_of_its_key_but_not_other_keys(
    kafka: KafkaBroker, unique: str
) -> None:
    # Given a batch where key "a"'s second message is larger than the producer accepts
    topic = f"reject.{unique}"
    kafka.ensure_topic(topic)
    huge = b"x" * (kafka.config.max_request_size + 1)
    messages = [
        BrokerMessage(topic=topic, key="a", value=b"a1"),
        BrokerMessage(topic=topic, key="b", value=b"b1"),
        BrokerMessage(topic=topic, key="a", value=huge),
        BrokerMessage(topic=topic, key="b", value=b"b2"),
        BrokerMessage(topic=topic, key="a", value=b"a3"),
    ]
    # When it is published
    results = kafka.publish(messages)
    # Then a2 is rejected, a3 is reported with the same kind of error, b is untouched
    assert [r.ok for r in results] == [True, True, False, True, False]
    assert isinstance(results[2].error, MessageRejectedError)
    assert isinstance(results[4].error, MessageRejectedError)
    assert "earlier message" in str(results[4].error)
    # And a3 was never sent: the topic holds a1, b1, b2 only
    sub = kafka.subscribe(topic, f"g.{unique}", "m")
    try:
        received = receive_until([sub], 3, time.monotonic() + 15)
        received += receive_until([sub], 1, time.monotonic() + 1)
    finally:
        sub.close()
    assert sorted(d.value for _, d in received) == [b"a1", b"b1", b"b2"]


def test_an_invalid_topic_name_is_rejected(kafka: KafkaBroker) -> None:
    results = kafka.publish([BrokerMessage(topic="bad topic/!", key="k", value=b"v")])
    assert isinstance(results[0].error, MessageRejectedError)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_unreachable_bootstrap_is_reported_within_the_bound() -> None:
    with KafkaBroker(_unreachable_config(1500)) as down:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            down.ensure_topic("anything")
        with pytest.raises(BrokerUnavailableError):
            down.publish([BrokerMessage(topic="anything", key="k", value=b"v")])
        with pytest.raises(BrokerUnavailableError):
            down.subscribe("anything", "g", "m")
        # three clients, 1.5 s bootstrap bound each (the default bound is 10 s each)
        assert_within(time.monotonic() - started, 3 * 1.5, "three unreachable bootstraps")
    _collect_leaked_sockets()


def test_from_bootstrap_cleans_the_server_list() -> None:
    config = KafkaConfig.from_bootstrap(" h1:9092, h2:9093 ,", client_id="svc")
    assert config.bootstrap_servers == "h1:9092,h2:9093"
    assert config.client_id == "svc"
    assert KafkaConfig.from_bootstrap(["a:1", "b:2"]).bootstrap_servers == "a:1,b:2"


def test_from_client_config_splits_a_kafka_python_dict() -> None:
    config = KafkaConfig.from_client_config(
        {
            "bootstrap_servers": ["k1:9092", "k2:9092"],
            "client_id": "svc",
            "acks": 1,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "user",
            "sasl_plain_password": "secret",
            "ssl_cafile": "/etc/ca.pem",
            "compression_type": "gzip",
            "fetch_max_bytes": 1024,
            "retry_backoff_ms": 50,
            "enable_auto_commit": True,
        }
    )
    assert config.bootstrap_servers == "k1:9092,k2:9092"
    assert config.acks == 1
    assert config.security == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "user",
        "sasl_plain_password": "secret",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert config.producer_options == {"compression_type": "gzip"}
    assert config.consumer_options == {"fetch_max_bytes": 1024}
    assert config.common_options == {"retry_backoff_ms": 50}
    # auto-commit can never be turned on: offsets are committed on ack only
    assert config.consumer_config(group="g", consumer_name="c")["enable_auto_commit"] is False
    with pytest.raises(ConfigurationError, match="no_such_setting"):
        KafkaConfig.from_client_config({"bootstrap_servers": "k:1", "no_such_setting": 1})
    with pytest.raises(ConfigurationError, match="bootstrap_servers"):
        KafkaConfig.from_client_config({"client_id": "x"})


def test_idempotence_requires_at_most_five_requests_in_flight() -> None:
    with pytest.raises(ConfigurationError):
        KafkaConfig(bootstrap_servers="k:1", max_in_flight_requests_per_connection=6)
    config = KafkaConfig(
        bootstrap_servers="k:1", enable_idempotence=False, max_in_flight_requests_per_connection=6
    )
    assert config.producer_config()["max_in_flight_requests_per_connection"] == 6


def test_security_and_client_options_reach_every_kafka_python_client() -> None:
    config = KafkaConfig(
        bootstrap_servers="k:1",
        security={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
        common_options={"retry_backoff_ms": 77, "fetch_max_bytes": 5},
        producer_options={"compression_type": "gzip"},
        consumer_options={"fetch_min_bytes": 2, "enable_auto_commit": True},
        admin_options={"client_id": "admin-x"},
    )
    producer = config.producer_config()
    consumer = config.consumer_config(group="grp", consumer_name="worker-1")
    admin = config.admin_config()
    for kwargs in (producer, consumer, admin):
        assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
        assert kwargs["retry_backoff_ms"] == 77
    assert producer["compression_type"] == "gzip"
    assert "fetch_max_bytes" not in producer  # a consumer-only common option is filtered
    assert consumer["fetch_max_bytes"] == 5 and consumer["fetch_min_bytes"] == 2
    assert consumer["enable_auto_commit"] is False and consumer["group_id"] == "grp"
    assert consumer["client_id"] == "outboxkit-worker-1"
    assert "group_instance_id" not in consumer
    assert admin["client_id"] == "admin-x"
    assert producer["acks"] == "all" and producer["enable_idempotence"] is True


def test_options_are_handed_to_the_kafka_python_clients(kafka_bootstrap: str, unique: str) -> None:
    # Given options in every pass-through dict
    config = KafkaConfig.from_bootstrap(
        kafka_bootstrap,
        security={"security_protocol": "PLAINTEXT"},
        common_options={"retry_backoff_ms": 77},
        producer_options={"compression_type": "gzip"},
        consumer_options={"fetch_min_bytes": 2},
    )
    topic = f"opts.{unique}"
    with KafkaBroker(config) as broker:
        # When the broker creates its producer and a consumer
        assert broker.publish([BrokerMessage(topic=topic, key="k", value=b"v")])[0].ok
        sub = broker.subscribe(topic, f"g.{unique}", "worker-1")
        try:
            # Then kafka-python's own objects carry them (and the bounded timeouts)
            producer_config = broker._producer.config
            consumer_config = sub._consumer.config
            assert producer_config["compression_type"] == "gzip"
            assert producer_config["retry_backoff_ms"] == 77
            assert producer_config["security_protocol"] == "PLAINTEXT"
            assert producer_config["acks"] == -1  # "all"
            assert producer_config["enable_idempotence"] is True
            assert producer_config["max_block_ms"] == config.max_block_ms
            assert consumer_config["fetch_min_bytes"] == 2
            assert consumer_config["retry_backoff_ms"] == 77
            assert consumer_config["enable_auto_commit"] is False
            assert consumer_config["session_timeout_ms"] == 6000
            assert consumer_config["client_id"] == "outboxkit-worker-1"
            # And what was published arrives through the gzip-compressed producer
            received = receive_until([sub], 1, time.monotonic() + 15)
            assert [d.value for _, d in received] == [b"v"]
        finally:
            sub.close()


def test_fnv1a_matches_the_published_test_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_go_partitioner_uses_go_int32_truncated_remainder() -> None:
    # fnv1a("a") as int32 is -468965076: Go's % gives -1 (abs 1) with 5 partitions, where
    # Python's floor modulo would give 4.
    assert go_fnv1a_partitioner(b"a", list(range(5)), []) == 1
    assert go_fnv1a_partitioner(b"a", [0, 1, 2], [0, 1, 2]) == 0
    assert go_fnv1a_partitioner(None, [0, 1, 2], [2]) == 2


def test_go_partitioner_puts_each_key_on_the_partition_the_go_relay_would_pick(
    kafka_bootstrap: str, unique: str
) -> None:
    # Given a 3-partition topic and a broker that partitions like kafka-go's Hash balancer
    topic = f"gopart.{unique}"
    keys = [f"conversation-{i}" for i in range(12)]
    with KafkaBroker(KafkaConfig.from_bootstrap(kafka_bootstrap, partitioner="go-fnv1a")) as go:
        go.ensure_topic(topic)
        # When one message per key is published
        assert all(
            r.ok for r in go.publish([BrokerMessage(topic=topic, key=k, value=b"v") for k in keys])
        )
        sub = go.subscribe(topic, f"g.{unique}", "m")
        try:
            received = receive_until([sub], len(keys), time.monotonic() + 20)
        finally:
            sub.close()
    # Then every key sits on |int32(fnv1a(key)) % 3|, and the keys use several partitions
    placed = {d.key: d.receipt[0] for _, d in received}
    expected = {k: go_fnv1a_partitioner(k.encode(), [0, 1, 2], [0, 1, 2]) for k in keys}
    assert placed == expected
    assert len(set(placed.values())) > 1


def test_ack_many_commits_the_highest_offset_of_each_partition_but_not_stale_ones(
    kafka: KafkaBroker, unique: str
) -> None:
    from kafka import TopicPartition

    # Given deliveries from several partitions, received and not yet acknowledged
    topic = f"ackmany.{unique}"
    kafka.ensure_topic(topic)
    messages = [BrokerMessage(topic=topic, key=f"k{i % 6}", value=b"v") for i in range(18)]
    assert all(r.ok for r in kafka.publish(messages))
    sub = kafka.subscribe(topic, f"g.{unique}", "m")
    try:
        got = [d for _, d in receive_until([sub], 18, time.monotonic() + 20, ack=False)]
        by_partition: dict[int, list[int]] = {}
        for delivery in got:
            by_partition.setdefault(delivery.receipt[0], []).append(delivery.receipt[1])
        assert len(by_partition) > 1
        stale_partition = min(by_partition)
        # When the batch is acknowledged at once, one partition's deliveries carrying an
        # assignment epoch from before a rebalance
        batch = [
            attrs.evolve(d, receipt=(d.receipt[0], d.receipt[1], d.receipt[2] - 1))
            if d.receipt[0] == stale_partition
            else d
            for d in got
        ]
        sub.ack_many(batch)
        # Then each current partition's committed offset is its highest offset + 1
        for partition, offsets in by_partition.items():
            committed = sub._consumer.committed(TopicPartition(topic, partition))
            if partition == stale_partition:
                assert committed is None  # it will be delivered again
            else:
                assert committed == max(offsets) + 1
    finally:
        sub.close()


def test_latency_settings_reach_kafka_python() -> None:
    config = KafkaConfig(bootstrap_servers="k:1", fetch_max_wait_ms=7, linger_ms=0)
    assert config.consumer_config(group="g", consumer_name="c")["fetch_max_wait_ms"] == 7
    assert config.producer_config()["linger_ms"] == 0
    # The defaults are chosen for latency, not kafka-python's 500 ms fetch wait
    assert KafkaConfig(bootstrap_servers="k:1").fetch_max_wait_ms <= 50
    assert (
        KafkaConfig.from_client_config(
            {"bootstrap_servers": "k:1", "fetch_max_wait_ms": 3}
        ).fetch_max_wait_ms
        == 3
    )
