"""Broker implementations of :class:`outboxkit.broker.Broker`:

* :mod:`~outboxkit.brokers.memory`: in-process, for tests, demos and embedded use;
* :mod:`~outboxkit.brokers.redis_streams`: Redis Streams (redis-py, extra ``redis``);
* :mod:`~outboxkit.brokers.kafka`: Kafka through kafka-python (extra ``kafka``);
* :mod:`~outboxkit.brokers.confluent`: Kafka through librdkafka (confluent-kafka, extra
  ``confluent``);
* :mod:`~outboxkit.brokers.urls`: one of them from a URL, for the CLI and scripts.

Only :class:`MemoryBroker` is imported here: the others need optional dependencies, so
import them from their modules, e.g.
``from outboxkit.brokers.redis_streams import RedisStreamsBroker``. Importing this package
never requires redis or kafka to be installed.
"""

from __future__ import annotations

from outboxkit.brokers.memory import MemoryBroker, MemoryBrokerConfig, MemoryStore

__all__ = ["MemoryBroker", "MemoryBrokerConfig", "MemoryStore"]
