"""The Redis Streams broker: owns the client, publishes, hands out subscriptions."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis

from outboxkit.broker import Broker, BrokerMessage, SendResult
from outboxkit.brokers.redis_streams.config import RedisStreamsConfig
from outboxkit.brokers.redis_streams.errors import setup_error, unavailable
from outboxkit.brokers.redis_streams.liveness import Heartbeat, Member
from outboxkit.brokers.redis_streams.publish import PUBLISH_SCRIPT, publish_batch
from outboxkit.brokers.redis_streams.subscription import RedisStreamsSubscription
from outboxkit.brokers.redis_streams.takeover import TAKEOVER_SCRIPT
from outboxkit.errors import (
    BrokerClosedError,
    BrokerError,
    BrokerSetupError,
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
        #: Open subscriptions -> their heartbeat token.
        self._subscriptions: dict[RedisStreamsSubscription, int] = {}

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
        subscription = RedisStreamsSubscription(
            self, topic, group, consumer_name, on_close=self._forget
        )
        with self._lock:
            self._subscriptions[subscription] = token
            if self._closed:
                subscription.close()
                raise BrokerClosedError("Redis Streams broker is closed")
        return subscription

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create the stream (empty) and the group at the beginning; idempotent.

        Without a group, an empty stream cannot exist in Redis, so nothing is created (the
        first ``XADD`` creates it) and the server is only ``PING``-ed: the relay calls this
        at start, and a connection Redis refuses for good (a wrong password, a database
        number the server does not have) must stop the engine there, with one line.
        """
        self._check_open()
        _check_name("topic", topic)
        if group is not None:
            _check_name("group", group)
        what = f"creating group {group} on {topic}" if group else f"connecting for {topic}"
        try:
            if group is None:
                self._client.ping()
            else:
                self._client.xgroup_create(topic, group, id="0", mkstream=True)
        except redis.exceptions.RedisError as exc:
            fatal = setup_error(exc, what)
            if fatal is not None:
                raise fatal from exc
            if isinstance(exc, redis.exceptions.NoPermissionError):
                # An ACL that refuses the group never heals by waiting: fatal too.
                raise BrokerSetupError(
                    f"Redis refused {what}: {type(exc).__name__}: {exc}"
                ) from exc
            if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                raise unavailable(exc, what) from exc
            if isinstance(exc, redis.exceptions.ResponseError) and "BUSYGROUP" in str(exc):
                return
            raise BrokerError(f"{what} failed: {exc}") from exc

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
            subscriptions = list(self._subscriptions)
            self._subscriptions.clear()  # the heartbeat's stop ends every member at once
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

    def _forget(self, subscription: RedisStreamsSubscription) -> None:
        """Called by a closing subscription: stop keeping it alive (never blocks)."""
        with self._lock:
            token = self._subscriptions.pop(subscription, None)
        if token is not None:
            self._heartbeat.remove(token)

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("Redis Streams broker is closed")


def _check_name(what: str, name: str) -> None:
    if not name or not name.strip():
        raise InvalidNameError(f"{what} must not be empty")
