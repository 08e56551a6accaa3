"""Build a broker from a URL, for the CLI and quick scripts.

Applications with real configuration should construct ``KafkaBroker`` or
``RedisStreamsBroker`` themselves; this helper covers the common cases only. Broker URLs:
``memory://``, ``redis://host:port/db`` (also ``rediss://``),
``kafka://host:port[,host:port...]`` (kafka-python), ``confluent://host:port[,...]``
(librdkafka, needs the ``confluent`` extra). Each broker's module is imported only for its
own scheme, so no optional dependency is needed for the others.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from outboxkit.broker import Broker
from outboxkit.errors import ConfigurationError


def broker_from_url(url: str) -> Broker:
    """A broker for ``url``; raises :class:`ConfigurationError` for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from outboxkit.brokers.memory import MemoryBroker

        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker.from_url(url)
    if scheme == "kafka":
        from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

        bootstrap = url.split("://", 1)[1].strip("/")
        if not bootstrap:
            raise ConfigurationError(f"kafka URL needs host:port: {url!r}")
        return KafkaBroker(KafkaConfig.from_bootstrap(bootstrap))
    if scheme == "confluent":
        from outboxkit.brokers.confluent import ConfluentKafkaBroker

        bootstrap = url.split("://", 1)[1].strip("/")
        if not bootstrap:
            raise ConfigurationError(f"confluent URL needs host:port: {url!r}")
        return ConfluentKafkaBroker.from_bootstrap(bootstrap)
    raise ConfigurationError(
        f"unknown broker URL {url!r}: use memory://, redis://host:port/db, kafka://host:port "
        "or confluent://host:port"
    )
