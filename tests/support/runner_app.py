"""An application for the fail-fast and bounded-stop worker tests (run in a subprocess).

Like a real application it reads its settings from the environment: the database URL, the
broker URL (``memory://``, ``kafka://host:port``, ``redis://host:port/db``), the service
name, which also names its table, and for Kafka whether to create topics and the bootstrap
timeout.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.messages import Event
from outboxkit.routing import Routing

EVENT_TYPE = "ops.checked"


def broker_for(url: str) -> Broker:
    """The broker an ``RUNNER_APP_BROKER`` URL names."""
    if url.startswith("kafka://"):
        from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

        create = os.environ.get("RUNNER_APP_CREATE_TOPICS", "1") == "1"
        bootstrap_ms = int(os.environ.get("RUNNER_APP_KAFKA_BOOTSTRAP_TIMEOUT_MS", "10000"))
        return KafkaBroker(
            KafkaConfig.from_bootstrap(
                url.removeprefix("kafka://"),
                create_topics=create,
                bootstrap_timeout_ms=bootstrap_ms,
            )
        )
    if url.startswith("redis://"):
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker.from_url(url)
    return MemoryBroker()


def build() -> Engine:
    """The factory ``outboxkit worker tests.support.runner_app:build`` calls."""
    routing = Routing()
    routing.register(EVENT_TYPE, os.environ["RUNNER_APP_SERVICE"])
    engine = Engine(
        SqlRepository.from_url(os.environ["RUNNER_APP_DB_URL"]),
        broker_for(os.environ.get("RUNNER_APP_BROKER", "memory://")),
        routing,
    )

    @engine.register_handler(EVENT_TYPE)
    def check(event: Event, connection: Connection) -> None:
        pass

    return engine
