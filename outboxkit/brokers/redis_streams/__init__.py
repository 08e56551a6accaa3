"""Redis Streams as an outboxkit :class:`~outboxkit.broker.Broker` (redis-py, synchronous).

A topic is a stream key, a consumer group is a Redis consumer group, a member is a Redis
consumer with a stable name. The classic Redis Streams pitfalls are handled here:

* Un-acknowledged entries are never redelivered by Redis on their own: the pending entries
  list (PEL) does not expire. Each subscription therefore re-reads its own pending entries
  after a restart (``XREADGROUP ... 0``) and, every ``claim_interval_seconds``, takes over
  entries other (dead or hung) members left idle longer than ``claim_idle_seconds``
  (``XAUTOCLAIM``), reporting their delivery count from ``XPENDING``.
* Redis cannot tell a dead member from a slow one, and a restarted process has a new name
  (``<host>-<pid>-<n>``). Each subscription therefore keeps a liveness key with a short TTL
  (``member_ttl_seconds``), refreshed by the broker's heartbeat thread. When it expires (a
  ``kill -9``) or is deleted (``close``), the next sweep of another member takes over the
  dead member's pending entries at once and, once none are left, removes it from the group
  (``XGROUP DELCONSUMER``). Members that never kept a key (older versions, other
  languages) are only judged by the idle rule. A hung process whose heartbeat still runs
  keeps its entries until ``claim_idle_seconds``: set it above the longest handler.
* Groups are created at ``0`` (``XGROUP CREATE ... 0 MKSTREAM``), never ``$``, so messages
  published before the first consumer existed are delivered.
* Consumer names are the caller's: one that subscribes again under the same name re-reads
  its own pending entries at once.

Thread safety: the broker's client (its connection pool) is shared by every thread; each
subscription holds one connection of the pool for its blocking reads. ``close`` of a
subscription only sets a flag; a blocked read returns within one ``block_ms`` slice.

One module per concern:

* :mod:`.config`: :class:`RedisStreamsConfig` and the client it builds;
* :mod:`.broker`: :class:`RedisStreamsBroker` (lifecycle, groups, subscriptions);
* :mod:`.publish`: the Lua script that publishes a batch without reordering a key;
* :mod:`.subscription`: :class:`RedisStreamsSubscription` (read, recover, acknowledge);
* :mod:`.liveness`: the liveness keys and the heartbeat thread; :mod:`.takeover`: what
  happens to dead members;
* :mod:`.wire`: the fields of a stream entry; :mod:`.errors`: redis-py errors classified.
"""

from __future__ import annotations

from outboxkit.brokers.redis_streams.broker import RedisStreamsBroker
from outboxkit.brokers.redis_streams.config import (
    DEFAULT_BLOCK_MS,
    DEFAULT_CLAIM_IDLE_SECONDS,
    DEFAULT_CLAIM_INTERVAL_SECONDS,
    DEFAULT_MEMBER_TTL_SECONDS,
    DEFAULT_SOCKET_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    RedisStreamsConfig,
)
from outboxkit.brokers.redis_streams.subscription import RedisStreamsSubscription

__all__ = [
    "RedisStreamsBroker",
    "RedisStreamsConfig",
    "RedisStreamsSubscription",
    "DEFAULT_BLOCK_MS",
    "DEFAULT_CLAIM_IDLE_SECONDS",
    "DEFAULT_CLAIM_INTERVAL_SECONDS",
    "DEFAULT_MEMBER_TTL_SECONDS",
    "DEFAULT_SOCKET_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
]
