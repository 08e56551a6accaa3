"""The run's own brokers: a ``redis-server`` or a Tansu, on a free loopback port.

Never the shared system Redis: a scenario stops and restarts its broker, and a restart must
come back **empty** (no persistence), which is what "the broker lost everything" means.
Each broker also offers a raw client to put bytes on a topic behind outboxkit's back, for
the garbage and forged messages.
"""

from __future__ import annotations

import abc
import socket

import redis

from outboxkit.testing.redis_server import RedisServer
from outboxkit.testing.services import free_port
from outboxkit.testing.tansu import TansuServer

#: How long a started broker may take to answer.
START_TIMEOUT = 20.0


class OwnBroker(abc.ABC):
    """A broker process this run owns: start, stop (the outage), start again empty."""

    kind: str

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @abc.abstractmethod
    def start(self) -> None:
        """Start on :attr:`port` and wait until it serves; the broker holds no data."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Kill the broker process (its data goes with it). Idempotent."""

    def close(self) -> None:
        """Stop for good and release what the broker holds on disk."""
        self.stop()

    def accepts_connections(self) -> bool:
        """Whether something listens on the broker's port (False while it is stopped)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    @abc.abstractmethod
    def inject(self, topic: str, key: bytes, value: bytes) -> None:
        """Append one raw message to ``topic``, bypassing outboxkit entirely."""


class OwnRedis(OwnBroker):
    """``redis-server --save "" --appendonly no`` on a free port: a restart is empty."""

    kind = "redis"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self._server = RedisServer(port=self.port, start_timeout=START_TIMEOUT)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=2.0)

    def close(self) -> None:
        self._server.close()

    def _client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def inject(self, topic: str, key: bytes, value: bytes) -> None:
        client = self._client()
        try:
            client.xadd(topic, {b"key": key, b"value": value})
        finally:
            client.close()


class OwnTansu(OwnBroker):
    """A Tansu with memory storage: a restart on the same port is an empty Kafka."""

    kind = "kafka"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self._server: TansuServer | None = None

    def start(self) -> None:
        self._server = TansuServer(port=self.port, start_timeout=START_TIMEOUT).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(timeout=2.0)

    def inject(self, topic: str, key: bytes, value: bytes) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=self.address,
            client_id="okf-injector",
            max_request_size=2_000_000,
            request_timeout_ms=10_000,
        )
        try:
            producer.send(topic, key=key, value=value).get(timeout=15)
        finally:
            producer.close(timeout=5)


def own_broker(kind: str, workdir: str) -> OwnBroker:
    return OwnRedis(workdir) if kind == "redis" else OwnTansu(workdir)
