"""Kafka through librdkafka (``pip install outboxkit[confluent]``): an optional, faster broker.

``confluent-kafka`` ships librdkafka in its wheel; its producer is an order of magnitude
faster than kafka-python's on the same machine. kafka-python's
:class:`~outboxkit.brokers.kafka.KafkaBroker` stays the default; this one passes the same
conformance suite and keeps the same error classes and partitioner choice.

Modules: ``config`` (:class:`ConfluentKafkaConfig`), ``errors`` (librdkafka error -> ours,
one table), ``broker`` (publishing in per-key waves, producer replacement), ``subscription``
(the consumer), ``bench`` (produce throughput against a Tansu it starts).
"""

from __future__ import annotations

from outboxkit.brokers.confluent.broker import ConfluentKafkaBroker
from outboxkit.brokers.confluent.config import ConfluentKafkaConfig
from outboxkit.brokers.confluent.subscription import ConfluentKafkaSubscription

__all__ = ["ConfluentKafkaBroker", "ConfluentKafkaConfig", "ConfluentKafkaSubscription"]
