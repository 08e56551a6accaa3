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
from outboxkit.observability.logs import mask_url


def broker_from_url(url: str) -> Broker:
    """A broker for ``url``; raises :class:`ConfigurationError` for an unknown scheme, or
    for credentials in a Kafka URL (configure SASL in code: they would be taken for a host
    name, and printed as one). Errors show the URL with its password masked."""
    shown = mask_url(url)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from outboxkit.brokers.memory import MemoryBroker

        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        from outboxkit.brokers.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker.from_url(url)
    if scheme in ("kafka", "confluent"):
        bootstrap = url.split("://", 1)[1].strip("/")
        if not bootstrap:
            raise ConfigurationError(f"{scheme} URL needs host:port: {shown!r}")
        if "@" in bootstrap:
            raise ConfigurationError(
                f"{scheme} URL {shown!r} carries credentials, which a {scheme}:// URL cannot "
                "pass: give the broker a KafkaConfig (or ConfluentKafkaConfig) with its SASL "
                "settings in your application"
            )
        if scheme == "kafka":
            from outboxkit.brokers.kafka import KafkaBroker, KafkaConfig

            return KafkaBroker(KafkaConfig.from_bootstrap(bootstrap))
        from outboxkit.brokers.confluent import ConfluentKafkaBroker

        return ConfluentKafkaBroker.from_bootstrap(bootstrap)
    raise ConfigurationError(
        f"unknown broker URL {shown!r}: use memory://, redis://host:port/db, kafka://host:port "
        "or confluent://host:port"
    )
