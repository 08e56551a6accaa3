"""Kafka topics: partitions and replication are configurable, creation can be turned off.

With ``create_topics=False`` (topics managed elsewhere, no CreateTopics permission) a
missing topic is a clear start-up error naming it, never an endless retry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker, BrokerMessage
from outboxkit.brokers.confluent import ConfluentKafkaBroker
from outboxkit.brokers.kafka import KafkaBroker
from outboxkit.engine import Engine, EngineConfig
from outboxkit.errors import BrokerSetupError, FatalError
from outboxkit.inbox.receipts import receipts_topic
from outboxkit.routing import Routing, ServiceCatalog
from tests.support.engine import fatal_error_on_start
from tests.support.paths import ROOT
from tests.support.timing import assert_within

BROKERS: dict[str, Callable[..., Broker]] = {
    "kafka": KafkaBroker.from_bootstrap,
    "confluent": ConfluentKafkaBroker.from_bootstrap,
}


def _partitions(bootstrap: str, topic: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (described,) = admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        admin.close()


@pytest.mark.parametrize("kind", sorted(BROKERS))
def test_ensure_topic_creates_the_configured_number_of_partitions(
    kind: str, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"ops-topics-{kind}-{unique}"
    with BROKERS[kind](kafka_bootstrap, num_partitions=5, replication_factor=1) as broker:
        broker.ensure_topic(topic)

    assert _partitions(kafka_bootstrap, topic) == 5


@pytest.mark.parametrize("kind", sorted(BROKERS))
def test_with_creation_off_a_missing_topic_is_a_setup_error_naming_it(
    kind: str, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"ops-missing-{kind}-{unique}"
    with (
        BROKERS[kind](kafka_bootstrap, create_topics=False) as broker,
        pytest.raises(BrokerSetupError, match=f"{topic}.*does not exist") as raised,
    ):
        broker.ensure_topic(topic)
    assert isinstance(raised.value, FatalError)

    # and nothing was created behind our back
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


@pytest.mark.parametrize("kind", sorted(BROKERS))
def test_with_creation_off_an_existing_topic_is_used_as_it_is(
    kind: str, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"ops-existing-{kind}-{unique}"
    with KafkaBroker.from_bootstrap(kafka_bootstrap, num_partitions=2) as creator:
        creator.ensure_topic(topic)

    with BROKERS[kind](kafka_bootstrap, create_topics=False, num_partitions=7) as broker:
        broker.ensure_topic(topic)
        results = broker.publish([BrokerMessage(topic=topic, key="k", value=b"v", headers={})])

    assert [r.error for r in results] == [None]
    assert _partitions(kafka_bootstrap, topic) == 2  # left as it was


def test_an_engine_with_creation_off_and_no_topic_stops_with_one_error(
    kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:
    routing = Routing()
    route = routing.register("ops.checked", f"ops{unique}")
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/outbox.db")
    broker = KafkaBroker.from_bootstrap(kafka_bootstrap, create_topics=False)
    engine = Engine(repository, broker, routing)
    engine.register_handler("ops.checked", lambda event, connection: None)
    engine.create_schema()

    error = fatal_error_on_start(engine, timeout=15, closing=repository)

    assert isinstance(error, BrokerSetupError)
    assert route.topic in str(error)


def test_a_worker_with_creation_off_and_no_topic_exits_non_zero_within_seconds(
    kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:
    env = dict(
        os.environ,
        RUNNER_APP_DB_URL=f"sqlite:///{tmp_path}/ops.db",
        RUNNER_APP_SERVICE=f"ops{unique}",
        RUNNER_APP_BROKER=f"kafka://{kafka_bootstrap}",
        RUNNER_APP_CREATE_TOPICS="0",
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "outboxkit",
            "worker",
            "tests.support.runner_app:build",
            "--migrate",
        ],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr

    assert done.returncode == 1, output
    assert_within(took, 10.0, f"a worker failing fast ({output})")
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert f"ops{unique}" in errors[0], output
    assert "does not exist" in errors[0]
    assert "Traceback" not in output


def test_a_missing_receipts_topic_with_creation_off_stops_the_producer_engine(
    kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:
    # Given a service consumed elsewhere through an inbox, its topic made by the operator
    # but not its receipts topic, and topic creation off
    catalog = ServiceCatalog(namespace=f"ops-{unique}")
    catalog.configure(f"ops{unique}", inbox=True)
    routing = Routing(catalog)
    route = routing.register("ops.checked", f"ops{unique}")
    with KafkaBroker.from_bootstrap(kafka_bootstrap) as creator:
        creator.ensure_topic(route.topic)
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/outbox.db")
    broker = KafkaBroker.from_bootstrap(kafka_bootstrap, create_topics=False)
    engine = Engine(
        repository,
        broker,
        routing,
        config=EngineConfig(relay_services=(route.service,), consumer_services=()),
    )
    engine.create_schema()

    # When it starts, the thread that applies the consumers' receipts meets the gap
    error = fatal_error_on_start(engine, timeout=15, closing=repository)

    # Then the engine stopped on it (no retry can help), naming the topic to create
    assert isinstance(error, BrokerSetupError)
    assert receipts_topic(route) in str(error)
