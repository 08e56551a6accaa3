"""``ConfluentKafkaConfig``: every librdkafka setting :class:`ConfluentKafkaBroker` uses.

librdkafka takes one flat dict of dotted names (``"message.timeout.ms"``) for every client,
so this class names the settings outboxkit depends on, validates them at construction, and
builds the three dicts (producer, consumer, admin). Anything else passes through unchanged in
``common_options`` (every client: TLS, SASL, ...) or the client-specific ``*_options``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from outboxkit.errors import ConfigurationError
from outboxkit.observability.logs import settings_repr

__all__ = ["PARTITIONERS", "ConfluentKafkaConfig"]

#: Our partitioner names -> librdkafka's ``partitioner`` value. ``murmur2_random`` is what
#: the Java client (and kafka-python) do with a key. librdkafka's ``fnv1a`` computes
#: ``|int32(fnv1a(key)) % n|``, exactly kafka-go's (and Sarama's) ``Hash`` balancer, which
#: tests/test_broker_confluent.py checks against ``go_fnv1a_partitioner`` on a real broker.
PARTITIONERS: Mapping[str, str] = {"murmur2_random": "murmur2_random", "go-fnv1a": "fnv1a"}

#: Settings outboxkit must own; setting them through an options dict is an error.
_OWNED = frozenset(
    {
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "on_delivery",
        "error_cb",
        "logger",
    }
)


def _frozen_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


def _no_owned_keys(
    instance: Any, attribute: attrs.Attribute[Any], value: Mapping[str, Any]
) -> None:
    owned = sorted(_OWNED.intersection(value))
    if owned:
        raise ConfigurationError(
            f"{attribute.name} may not set {', '.join(owned)}: outboxkit manages them "
            "(offsets are committed on ack only, callbacks are ours)"
        )


def _validate_in_flight(
    instance: ConfluentKafkaConfig, attribute: attrs.Attribute[int], value: int
) -> None:
    if value < 1:
        raise ConfigurationError("max_in_flight_requests_per_connection must be at least 1")
    if instance.enable_idempotence and value > 5:
        raise ConfigurationError(
            "an idempotent producer keeps order only with max_in_flight_requests_per_connection "
            f"<= 5 (got {value})"
        )


def _options() -> Any:
    """A pass-through dict of librdkafka settings (copied; our managed keys refused; secrets
    such as ``sasl.password`` masked in repr)."""
    return attrs.field(
        factory=dict, converter=_frozen_dict, validator=_no_owned_keys, repr=settings_repr
    )


@attrs.frozen(kw_only=True)
class ConfluentKafkaConfig:
    """Settings of :class:`~outboxkit.brokers.confluent.ConfluentKafkaBroker` (librdkafka).

    Field names follow :class:`~outboxkit.brokers.kafka.KafkaConfig` where the meaning is
    the same, so moving between the two brokers is a change of class name. Dicts merge in
    this order (later wins): our named fields, ``common_options``, then the client's own
    dict. ``enable.auto.commit`` and ``enable.auto.offset.store`` are always off: offsets are
    committed only by ``ack``, after the event was handled.
    """

    bootstrap_servers: str = attrs.field(validator=attrs.validators.min_len(1))
    client_id: str = "outboxkit"
    # --- producer
    #: Wait for every in-sync replica: a message is ``ok`` only when it is durable.
    acks: str | int = "all"
    #: Small batching delay; ``publish`` flushes each wave at once anyway.
    linger_ms: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    #: Broker-side de-duplication of retries; keeps partition order when librdkafka retries.
    enable_idempotence: bool = True
    #: At most 5 with idempotence (the Kafka protocol's limit for ordered retries).
    max_in_flight_requests_per_connection: int = attrs.field(
        default=5, validator=_validate_in_flight
    )
    #: Upper bound from ``produce()`` to a delivery report, retries included
    #: (``message.timeout.ms``): the longest a publish waits for a broker that is away.
    delivery_timeout_ms: int = attrs.field(default=20_000, validator=attrs.validators.gt(0))
    #: One produce request's timeout on the broker (``request.timeout.ms``).
    request_timeout_ms: int = attrs.field(default=10_000, validator=attrs.validators.gt(0))
    #: Network requests (metadata, commits, admin) give up after this (``socket.timeout.ms``).
    socket_timeout_ms: int = attrs.field(default=10_000, validator=attrs.validators.gt(0))
    #: Connecting (TCP, TLS, SASL) to one broker may take this long.
    connection_setup_timeout_ms: int = attrs.field(default=10_000, validator=attrs.validators.gt(0))
    #: Largest message librdkafka accepts; larger ones are rejected before sending.
    message_max_bytes: int = attrs.field(default=1_000_000, validator=attrs.validators.gt(0))
    #: How keys map to partitions: ``"murmur2_random"`` (the Java client's) or ``"go-fnv1a"``
    #: (the Go relay's kafka-go ``Hash`` balancer). Use ``"go-fnv1a"`` while Go and Python
    #: producers publish the same keys to one topic, so a key keeps its partition and order.
    partitioner: str = attrs.field(
        default="murmur2_random", validator=attrs.validators.in_(tuple(PARTITIONERS))
    )
    # --- consumer
    #: These two suit both Tansu and Apache Kafka: a dead member is noticed in 6 s and a
    #: group forms in about 3 s.
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    #: How long the broker may hold a fetch waiting for data (librdkafka's default is
    #: 500 ms); lower means lower latency from publish to handler, more idle fetches.
    fetch_wait_max_ms: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    #: A new group starts at the beginning of the topic (nothing published earlier is lost).
    auto_offset_reset: str = "earliest"
    #: Send ``group.instance.id`` = consumer name (KIP-345 static membership).
    static_membership: bool = False
    # --- topics created by ``ensure_topic`` (see ``KafkaConfig`` for what each means)
    num_partitions: int = attrs.field(default=3, validator=attrs.validators.gt(0))
    replication_factor: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    #: ``False``: never create a topic; a missing one is a ``BrokerSetupError`` at start.
    create_topics: bool = True
    # --- pass-through librdkafka settings (dotted names)
    common_options: Mapping[str, Any] = _options()
    producer_options: Mapping[str, Any] = _options()
    consumer_options: Mapping[str, Any] = _options()
    admin_options: Mapping[str, Any] = _options()

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigurationError("heartbeat_interval_ms must be below session_timeout_ms")

    @classmethod
    def from_bootstrap(cls, servers: str | Iterable[str], **kwargs: Any) -> ConfluentKafkaConfig:
        """Config for ``"host:port,host2:port"`` (or a list of addresses) with our defaults."""
        text = servers if isinstance(servers, str) else ",".join(servers)
        cleaned = ",".join(part.strip() for part in text.split(",") if part.strip())
        return cls(bootstrap_servers=cleaned, **kwargs)

    @property
    def flush_timeout(self) -> float:
        """Seconds one wave may wait for its delivery reports: each has arrived by then."""
        return (self.delivery_timeout_ms + self.linger_ms) / 1000 + 1.0

    @property
    def admin_timeout(self) -> float:
        """Seconds an admin request (topic creation) may take."""
        return self.socket_timeout_ms / 1000

    def _common(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "socket.timeout.ms": self.socket_timeout_ms,
            "socket.connection.setup.timeout.ms": self.connection_setup_timeout_ms,
        }

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka dict of the shared ``Producer``."""
        base = self._common()
        base.update(
            {
                "acks": self.acks,
                "linger.ms": self.linger_ms,
                "enable.idempotence": self.enable_idempotence,
                "max.in.flight.requests.per.connection": (
                    self.max_in_flight_requests_per_connection
                ),
                "message.timeout.ms": self.delivery_timeout_ms,
                "request.timeout.ms": self.request_timeout_ms,
                "message.max.bytes": self.message_max_bytes,
                "partitioner": PARTITIONERS[self.partitioner],
            }
        )
        return {**base, **self.common_options, **self.producer_options}

    def consumer_config(self, *, group: str, consumer_name: str) -> dict[str, Any]:
        """The librdkafka dict of the ``Consumer`` of ``consumer_name`` in ``group``."""
        base = self._common()
        base.update(
            {
                "client.id": f"{self.client_id}-{consumer_name}",
                "session.timeout.ms": self.session_timeout_ms,
                "heartbeat.interval.ms": self.heartbeat_interval_ms,
                "fetch.wait.max.ms": self.fetch_wait_max_ms,
                "auto.offset.reset": self.auto_offset_reset,
            }
        )
        if self.static_membership:
            base["group.instance.id"] = consumer_name
        merged = {**base, **self.common_options, **self.consumer_options}
        merged.update(
            {"group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False}
        )
        return merged

    def admin_config(self) -> dict[str, Any]:
        """The librdkafka dict of the ``AdminClient`` that creates topics."""
        base = self._common()
        base["client.id"] = f"{self.client_id}-admin"
        return {**base, **self.common_options, **self.admin_options}
