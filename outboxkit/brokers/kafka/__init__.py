"""Kafka through kafka-python: one shared producer per broker, one consumer per subscription.

**Per-key order.** Messages of one key go to one partition (the key hash), and the
producer runs with ``enable_idempotence=True``, ``acks="all"`` and at most 5 requests in
flight, so retries of *retriable* errors never reorder a partition. That is not enough on
its own: when one record fails for good (rejected, or expired while the broker was away),
records sent after it can still be written (Dekaf PR #3054 reproduced order 2,3,1 on real
Kafka with idempotence on). So :meth:`KafkaBroker.publish` sends a batch in **waves**:
wave *n* holds the *n*-th message of every key still in good standing, and is sent with
``send()`` for each message and a single ``flush()``. A key whose message failed takes no
part in later waves; its remaining messages are reported with the same kind of error and
were never sent, so the relay retries them after the failed one and nothing overtakes it.
A batch of distinct keys is one wave (one flush, full producer speed); the number of
waves is the largest number of messages any one key has in the batch. ``flush()`` sends
at once regardless of ``linger_ms``, so a wave costs about one broker round trip.

**Thread safety.** The producer is thread-safe and shared by every publishing thread. A
kafka-python consumer is not, so each :class:`KafkaSubscription` owns its own
``KafkaConsumer``, used only under the subscription's lock; :meth:`KafkaSubscription.close`
from another thread only sets a flag (plus closes the consumer at once if nobody is using
it), and a ``receive`` polling in short slices notices it and closes the consumer itself.

**Bounded waits.** Every blocking call has a timeout: bootstrap, metadata
(``max_block_ms``), requests, delivery, flush, commits and admin calls. An unreachable
broker is reported as :class:`~outboxkit.errors.BrokerUnavailableError` within about
``bootstrap_timeout_ms`` (construction) or ``delivery_timeout_ms`` (publishing).

The package holds one concern per module: :mod:`.config` (``KafkaConfig``), :mod:`.errors`
(kafka-python errors to ours), :mod:`.partitioner` (Go-compatible FNV-1a), :mod:`.clients`
(building kafka-python clients), :mod:`.broker` (``KafkaBroker``) and :mod:`.subscription`
(``KafkaSubscription``).
"""

from __future__ import annotations

from outboxkit.brokers.kafka.broker import KafkaBroker
from outboxkit.brokers.kafka.config import SECURITY_OPTION_PREFIXES, KafkaConfig
from outboxkit.brokers.kafka.partitioner import fnv1a_32, go_fnv1a_partitioner
from outboxkit.brokers.kafka.subscription import KafkaSubscription

__all__ = [
    "KafkaBroker",
    "KafkaConfig",
    "KafkaSubscription",
    "SECURITY_OPTION_PREFIXES",
    "fnv1a_32",
    "go_fnv1a_partitioner",
]
