"""The Redis Streams broker: owns the client, publishes, hands out subscriptions."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis

from outboxkit.broker import Broker, BrokerMessage, SendResult
from outboxkit.brokers.redis_streams.config import RedisStreamsConfig
from outboxkit.brokers.redis_streams.errors import unavailable
from outboxkit.brokers.redis_streams.liveness import Heartbeat, Member
from outboxkit.brokers.redis_streams.publish import PUBLISH_SCRIPT, publish_batch
from outboxkit.brokers.redis_streams.subscription import RedisStreamsSubscription
from outboxkit.brokers.redis_streams.takeover import TAKEOVER_SCRIPT
from outboxkit.errors import (
    BrokerClosedError,
    BrokerError,
    ConfigurationError,
    InvalidNameError,
)

__all__ = ["RedisStreamsBroker"]


class RedisStreamsBroker(Broker):
    """:class:`~outboxkit.broker.Broker` on Redis Streams; see the package docstring.

    Owns one daemon thread, started with the first subscription and ended by :meth:`close`:
    the heartbeat that keeps the liveness keys of its open subscriptions (:mod:`.liveness`).
    """

    def __init__(self, config: RedisStreamsConfig, *, client: redis.Redis | None = None) -> None:
        self.config = config
        self._owns_client = client is None
        self._client: redis.Redis = client if client is not None else config.create_client()
        if self._client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisStreamsBroker needs a client with decode_responses=False: values are bytes"
            )
        self._publish_script = self._client.register_script(PUBLISH_SCRIPT)
        self.takeover_script = self._client.register_script(TAKEOVER_SCRIPT)
        self._heartbeat = Heartbeat(
            self._client, config.member_ttl_seconds, name=f"outboxkit-redis-heartbeat-{id(self):x}"
        )
        self._lock = threading.Lock()
        self._closed = False
        self._subscriptions: list[RedisStreamsSubscription] = []

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisStreamsBroker:
        """A broker owning a client for ``url``; ``settings`` are :class:`RedisStreamsConfig`."""
        return cls(RedisStreamsConfig(url=url, **settings))

    @classmethod
    def from_client(cls, client: redis.Redis, **settings: Any) -> RedisStreamsBroker:
        """A broker on the caller's client, which :meth:`close` leaves open.

        The client's own timeouts apply; give it a short ``socket_connect_timeout`` and a
        ``socket_timeout`` longer than ``block_ms``.
        """
        return cls(RedisStreamsConfig(**settings), client=client)

    @property
    def client(self) -> redis.Redis:
        return self._client

    # ------------------------------------------------------------------ Broker
    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        self._check_open()
        if not messages:
            return []
        return publish_batch(self._client, self._publish_script, self.config.maxlen, messages)

    def subscribe(self, topic: str, group: str, consumer_name: str) -> RedisStreamsSubscription:
        _check_name("consumer name", consumer_name)
        self.ensure_topic(topic, group)
        try:
            token = self._heartbeat.add(Member(topic, group, consumer_name))
        except redis.exceptions.RedisError as exc:
            raise unavailable(exc, f"marking {consumer_name} alive on {topic}") from exc
        subscription = RedisStreamsSubscription(self, topic, group, consumer_name, token)
        with self._lock:
            if self._closed:
                subscription.close()
                raise BrokerClosedError("Redis Streams broker is closed")
            self._subscriptions.append(subscription)
        return subscription

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create the stream (empty) and the group at the beginning; idempotent.

        Without a group, an empty stream cannot exist in Redis, so nothing is created: the
        first ``XADD`` creates it.
        """
        self._check_open()
        _check_name("topic", topic)
        if group is None:
            return
        _check_name("group", group)
        try:
            self._client.xgroup_create(topic, group, id="0", mkstream=True)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise unavailable(exc, f"creating group {group} on {topic}") from exc
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"creating group {group} on {topic} failed: {exc}") from exc

    def ping(self) -> None:
        """``PING`` the server (health checks); raises ``BrokerUnavailableError`` if it fails."""
        self._check_open()
        try:
            self._client.ping()
        except redis.exceptions.RedisError as exc:
            raise unavailable(exc, "pinging Redis") from exc

    def close(self) -> None:
        """Stop every subscription and the heartbeat (deleting the liveness keys, so the
        other members take over at once), then release the connections if they are ours."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
        # Bounded: with Redis unreachable the keys expire on their own.
        self._heartbeat.stop(timeout=self.config.socket_connect_timeout + 1.0)
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect()

    # ------------------------------------------------------------------ internals
    @property
    def closed(self) -> bool:
        return self._closed

    def _forget(self, subscription: RedisStreamsSubscription, token: int) -> None:
        """Called by a closing subscription: stop keeping it alive (never blocks)."""
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
        self._heartbeat.remove(token)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("Redis Streams broker is closed")


def _check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise InvalidNameError(f"{what} must not be empty")
