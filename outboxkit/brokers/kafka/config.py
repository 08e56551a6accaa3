"""KafkaConfig: every setting the Kafka broker hands to kafka-python, validated once."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from outboxkit.brokers.kafka.partitioner import go_fnv1a_partitioner_object
from outboxkit.errors import ConfigurationError
from outboxkit.observability.logs import settings_repr

logger = logging.getLogger(__name__)

#: kafka-python settings that configure TLS and SASL; ``from_client_config`` files them
#: under ``security`` (they apply to the producer, every consumer and the admin client).
SECURITY_OPTION_PREFIXES = ("security_protocol", "ssl_", "sasl_")


def _frozen_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


def _options() -> Any:
    """A pass-through dict of kafka-python settings (copied), its secrets masked in repr."""
    return attrs.field(factory=dict, converter=_frozen_dict, repr=settings_repr)


def _validate_in_flight(instance: KafkaConfig, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigurationError("max_in_flight_requests_per_connection must be at least 1")
    if instance.enable_idempotence and value > 5:
        raise ConfigurationError(
            "an idempotent producer keeps order only with max_in_flight_requests_per_connection "
            f"<= 5 (got {value})"
        )


@attrs.frozen(kw_only=True)
class KafkaConfig:
    """Everything :class:`KafkaBroker` passes to kafka-python.

    Option dicts are merged in this order (later wins): our named fields, ``common_options``,
    ``security``, then the client-specific dict (``producer_options``, ``consumer_options``,
    ``admin_options``). ``enable_auto_commit`` is always forced off: offsets are committed
    only by :meth:`KafkaSubscription.ack`, after the event was handled.
    """

    bootstrap_servers: str = attrs.field(validator=attrs.validators.min_len(1))
    client_id: str = "outboxkit"
    # --- producer
    #: Wait for every in-sync replica: a message is ``ok`` only when it is durable.
    acks: str | int = "all"
    #: Batching delay. ``publish`` flushes each wave at once, so this adds no latency to
    #: it; it only keeps the producer's I/O thread from sending the first records of a
    #: wave on their own while the rest are still being appended (more, smaller requests).
    #: 0 suits callers that ``send`` one record at a time without flushing.
    linger_ms: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    #: Broker-side de-duplication of producer retries; keeps partition order on retries.
    enable_idempotence: bool = True
    #: At most 5 with idempotence (the Kafka protocol's limit for ordered retries).
    max_in_flight_requests_per_connection: int = attrs.field(
        default=5, validator=_validate_in_flight
    )
    #: One request's timeout (producer, consumer and admin).
    request_timeout_ms: int = 10_000
    #: Upper bound for a record from ``send()`` to success or failure, retries included.
    delivery_timeout_ms: int = 20_000
    #: How long ``send()`` may block for topic metadata or buffer space.
    max_block_ms: int = 10_000
    #: How long creating a client may take to reach a bootstrap server.
    bootstrap_timeout_ms: int = 10_000
    #: Largest request the producer builds; larger messages are rejected before sending.
    max_request_size: int = 1_048_576
    # --- consumer
    #: These two suit both Tansu and Apache Kafka: a dead member is noticed in 6 s and a
    #: group forms in about 3 s (kafka-python's defaults make Tansu take over 20 s).
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    max_poll_records: int = 500
    #: How long the broker may hold a fetch that finds no new record. kafka-python's 500 ms
    #: made a publish-to-receive round trip take ~126 ms at the median on Tansu (3.3 ms
    #: with 10 ms). Lower is faster to deliver but costs an idle consumer one fetch request
    #: per interval (here ~50/s per member, a little CPU on both sides); raise it for many
    #: idle members, lower it for the last milliseconds.
    fetch_max_wait_ms: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    #: A member that stays out of a stable group (or in one, with no partition, while its
    #: topic is unknown) this long is replaced by a new consumer, after creating the topic
    #: again if needed. Well above a normal join (about 3 s on Tansu, a few seconds on
    #: Kafka), well below what a stuck group used to cost (minutes, or for good).
    group_settle_timeout_ms: int = attrs.field(default=30_000, validator=attrs.validators.gt(0))
    #: A new group starts at the beginning of the topic (nothing published earlier is lost).
    auto_offset_reset: str = "earliest"
    #: Send ``group_instance_id`` = consumer name (KIP-345 static membership): a restarted
    #: member gets its partitions back without a rebalance, but a member that dies holds
    #: them until ``session_timeout_ms`` and two live members may never share a name.
    static_membership: bool = False
    #: How keys map to partitions: ``"murmur2"`` (kafka-python's and Java's default) or
    #: ``"go-fnv1a"`` (the Go relay's kafka-go ``Hash`` balancer). Use ``"go-fnv1a"`` while
    #: Go and Python producers publish the same keys to one topic, so a key keeps its
    #: partition (and its order) whichever relay sent it.
    partitioner: str = attrs.field(
        default="murmur2", validator=attrs.validators.in_(("murmur2", "go-fnv1a"))
    )
    # --- topics created by ``ensure_topic``
    #: Partitions of a topic ``ensure_topic`` creates (an existing topic is left as it is).
    #: More partitions let more consumer threads of a service work in parallel.
    num_partitions: int = attrs.field(default=3, validator=attrs.validators.gt(0))
    #: Replicas of a topic ``ensure_topic`` creates. 1 suits one broker (and Tansu); use 3
    #: on a production cluster, or a topic is lost with its only broker.
    replication_factor: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    #: Whether ``ensure_topic`` creates a missing topic (needs the CreateTopics permission).
    #: ``False`` for clusters whose topics are managed elsewhere: the engine then only checks
    #: that the topic exists and stops with :class:`~outboxkit.errors.BrokerSetupError`
    #: naming it when it does not.
    create_topics: bool = True
    # --- pass-through kafka-python settings
    #: (Their repr masks secrets: ``sasl_plain_password``, ``ssl_password``...)
    security: Mapping[str, Any] = _options()
    common_options: Mapping[str, Any] = _options()
    producer_options: Mapping[str, Any] = _options()
    consumer_options: Mapping[str, Any] = _options()
    admin_options: Mapping[str, Any] = _options()

    @property
    def flush_timeout(self) -> float:
        """Seconds one wave's ``flush()`` may take: every record has failed or succeeded by then."""
        return (self.delivery_timeout_ms + self.linger_ms) / 1000 + 1.0

    @classmethod
    def from_bootstrap(cls, servers: str | Iterable[str], **kwargs: Any) -> KafkaConfig:
        """Config for ``"host:port,host2:port"`` (or a list of addresses) with our defaults."""
        text = servers if isinstance(servers, str) else ",".join(servers)
        cleaned = ",".join(part.strip() for part in text.split(",") if part.strip())
        return cls(bootstrap_servers=cleaned, **kwargs)

    @classmethod
    def from_client_config(cls, config: Mapping[str, Any]) -> KafkaConfig:
        """Split a kafka-python style config dict into ours.

        Keys naming one of our fields set it; TLS/SASL keys go to ``security``; keys only the
        producer knows go to ``producer_options``, only the consumer to
        ``consumer_options``, only the admin client to ``admin_options``, the rest to
        ``common_options``. Unknown keys raise :class:`ConfigurationError` (a typo would
        otherwise be found only when a client is created).
        """
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

        fields = {f.name for f in attrs.fields(cls)} - {
            "security",
            "common_options",
            "producer_options",
            "consumer_options",
            "admin_options",
            "num_partitions",
            "replication_factor",
            "create_topics",
            "static_membership",
            "group_settle_timeout_ms",
        }
        producer_keys = set(KafkaProducer.DEFAULT_CONFIG)
        consumer_keys = set(KafkaConsumer.DEFAULT_CONFIG)
        admin_keys = set(KafkaAdminClient.DEFAULT_CONFIG)
        ours: dict[str, Any] = {}
        buckets: dict[str, dict[str, Any]] = {
            "security": {},
            "common_options": {},
            "producer_options": {},
            "consumer_options": {},
            "admin_options": {},
        }
        for key, raw in config.items():
            value = raw
            if key == "bootstrap_servers" and not isinstance(raw, str):
                value = ",".join(raw)
            if key in fields:
                ours[key] = value
            elif key == "enable_auto_commit":
                if value:
                    logger.warning("enable_auto_commit is ignored: outboxkit commits on ack")
            elif key.startswith(SECURITY_OPTION_PREFIXES):
                buckets["security"][key] = value
            elif key in producer_keys and key in consumer_keys:
                buckets["common_options"][key] = value
            elif key in producer_keys:
                buckets["producer_options"][key] = value
            elif key in consumer_keys:
                buckets["consumer_options"][key] = value
            elif key in admin_keys:
                buckets["admin_options"][key] = value
            else:
                raise ConfigurationError(f"unknown kafka-python setting {key!r}")
        if "bootstrap_servers" not in ours:
            raise ConfigurationError("a Kafka client config needs bootstrap_servers")
        ours.update(buckets)
        return cls(**ours)

    # ------------------------------------------------------------------ kafka-python kwargs

    def _merge(
        self, base: dict[str, Any], own: Mapping[str, Any], allowed: set[str]
    ) -> dict[str, Any]:
        merged = dict(base)
        for extra in (self.common_options, self.security, own):
            merged.update(extra)
        # common/security dicts may name settings one client lacks (kafka-python rejects
        # unknown keys); the client-specific dict is passed through unfiltered, so a typo
        # there still fails loudly.
        return {k: v for k, v in merged.items() if k in allowed or k in own}

    def producer_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaProducer``."""
        from kafka import KafkaProducer

        base: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "acks": self.acks,
            "linger_ms": self.linger_ms,
            "enable_idempotence": self.enable_idempotence,
            "max_in_flight_requests_per_connection": self.max_in_flight_requests_per_connection,
            "request_timeout_ms": self.request_timeout_ms,
            "delivery_timeout_ms": self.delivery_timeout_ms,
            "max_block_ms": self.max_block_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "max_request_size": self.max_request_size,
        }
        if self.partitioner == "go-fnv1a":
            base["partitioner"] = go_fnv1a_partitioner_object()
        return self._merge(base, self.producer_options, set(KafkaProducer.DEFAULT_CONFIG))

    def consumer_config(self, *, group: str, consumer_name: str) -> dict[str, Any]:
        """Keyword arguments for the ``KafkaConsumer`` of ``consumer_name`` in ``group``."""
        from kafka import KafkaConsumer

        base: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": f"{self.client_id}-{consumer_name}",
            "group_id": group,
            "request_timeout_ms": max(self.request_timeout_ms, self.session_timeout_ms + 1000),
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "auto_offset_reset": self.auto_offset_reset,
        }
        if self.static_membership:
            base["group_instance_id"] = consumer_name
        merged = self._merge(base, self.consumer_options, set(KafkaConsumer.DEFAULT_CONFIG))
        merged["enable_auto_commit"] = False
        merged["group_id"] = group
        return merged

    def admin_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaAdminClient``."""
        from kafka import KafkaAdminClient

        base = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": f"{self.client_id}-admin",
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        return self._merge(base, self.admin_options, set(KafkaAdminClient.DEFAULT_CONFIG))
