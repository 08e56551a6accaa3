"""Broker implementations: ``memory`` (in-process), ``redis_streams`` and ``kafka``.

Only :class:`MemoryBroker` is imported here: the others need optional dependencies
(redis-py, kafka-python), so import them from their modules, e.g.
``from outboxkit.brokers.redis_streams import RedisStreamsBroker``. Importing this package
never requires redis or kafka to be installed.
"""

from __future__ import annotations

from outboxkit.brokers.memory import MemoryBroker, MemoryBrokerConfig, MemoryStore

__all__ = ["MemoryBroker", "MemoryBrokerConfig", "MemoryStore"]
