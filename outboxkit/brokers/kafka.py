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
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from outboxkit.broker import Broker, BrokerMessage, Delivery, SendResult, Subscription
from outboxkit.errors import (
    BrokerClosedError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    MessageRejectedError,
)

logger = logging.getLogger(__name__)

#: kafka-python settings that configure TLS and SASL; ``from_client_config`` files them
#: under ``security`` (they apply to the producer, every consumer and the admin client).
SECURITY_OPTION_PREFIXES = ("security_protocol", "ssl_", "sasl_")

#: Slice of a ``receive`` poll: how quickly a ``close()`` from another thread is noticed.
_POLL_SLICE_SECONDS = 0.2


_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash (Go's ``hash/fnv.New32a``)."""
    value = _FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return value


def go_fnv1a_partitioner(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """kafka-go's ``Hash`` balancer (also Sarama's): ``|int32(fnv1a(key)) % n|``.

    The Go relay publishes with it, so choosing it keeps each key on the partition the Go
    relay would pick. A ``None`` key (never produced by the relay) goes to an available
    partition, like kafka-go's round robin fallback.
    """
    partitions = sorted(all_partitions)
    if key is None:
        pool = sorted(available) or partitions
        return pool[0]
    signed = fnv1a_32(key)
    if signed >= 0x80000000:
        signed -= 0x100000000
    index = abs(int(math.fmod(signed, len(partitions))))  # Go's % truncates toward zero
    return partitions[index]


def _go_fnv1a_partitioner_object() -> Any:
    """:func:`go_fnv1a_partitioner` as a kafka-python ``Partitioner`` (imported lazily)."""
    from kafka.partitioner import Partitioner

    class GoFnv1aPartitioner(Partitioner):  # type: ignore[misc]
        def partition(  # noqa: PLR0917 - kafka-python's signature
            self,
            topic: str,
            key: Any,
            serialized_key: bytes | None,
            value: Any,
            serialized_value: bytes | None,
            cluster: Any,
        ) -> int:
            return go_fnv1a_partitioner(
                serialized_key,
                list(cluster.partitions_for_topic(topic)),
                list(cluster.available_partitions_for_topic(topic)),
            )

    return GoFnv1aPartitioner()


def _new_client(factory: Any, settings: Mapping[str, Any], what: str, servers: str) -> Any:
    """Build a kafka-python client; bad settings and unreachable brokers become ours."""
    from kafka.errors import KafkaConfigurationError

    try:
        return factory(**settings)
    except KafkaConfigurationError as exc:
        raise ConfigurationError(f"invalid Kafka {what} settings: {exc}") from exc
    except Exception as exc:
        raise BrokerUnavailableError(
            f"cannot connect a Kafka {what} to {servers}: {type(exc).__name__}: {exc}"
        ) from exc


def _frozen_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


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
    #: Small batching delay; ``publish`` flushes each wave at once anyway.
    linger_ms: int = 5
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
    num_partitions: int = attrs.field(default=3, validator=attrs.validators.gt(0))
    replication_factor: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    # --- pass-through kafka-python settings
    security: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    common_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    producer_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    consumer_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    admin_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)

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
            "static_membership",
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
            base["partitioner"] = _go_fnv1a_partitioner_object()
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


# --------------------------------------------------------------------------- errors


def _translate(exc: BaseException, what: str) -> BrokerError:
    """Map a kafka-python failure to our tree: outage -> unavailable, anything else rejected."""
    from kafka import errors as kerr

    text = f"{what}: {type(exc).__name__}: {exc}"
    unavailable: tuple[type[BaseException], ...] = (
        kerr.KafkaTimeoutError,
        kerr.KafkaConnectionError,
        kerr.BrokerNotAvailableError,
        kerr.RequestTimedOutError,
        kerr.NodeNotReadyError,
        kerr.NotEnoughReplicasError,
        kerr.NotEnoughReplicasAfterAppendError,
        kerr.CoordinatorNotAvailableError,
        kerr.NotCoordinatorError,
        kerr.CoordinatorLoadInProgressError,
        ConnectionError,
        TimeoutError,
    )
    # kafka-python 2.x raises NoBrokersAvailable on bootstrap; 3.x a KafkaTimeoutError.
    no_brokers = getattr(kerr, "NoBrokersAvailable", None)
    if isinstance(no_brokers, type):
        unavailable = (*unavailable, no_brokers)
    if isinstance(exc, unavailable):
        return BrokerUnavailableError(text)
    if isinstance(exc, kerr.KafkaError) and getattr(exc, "retriable", False):
        # Still retriable after the producer's own retries ran out: the cluster is not
        # serving this partition, nothing is wrong with the message.
        return BrokerUnavailableError(text)
    return MessageRejectedError(text)


def _same_kind(error: BrokerError, reason: str) -> BrokerError:
    kind = (
        BrokerUnavailableError
        if isinstance(error, BrokerUnavailableError)
        else (MessageRejectedError)
    )
    return kind(reason)


# --------------------------------------------------------------------------- broker


class KafkaBroker(Broker):
    """A :class:`~outboxkit.broker.Broker` on Kafka (or any Kafka-protocol server).

    Clients are created lazily: constructing a broker never touches the network.
    """

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._producer: Any = None
        self._admin: Any = None
        self._admin_lock = threading.Lock()
        self._closed = False
        self._subscriptions: list[KafkaSubscription] = []

    @classmethod
    def from_bootstrap(cls, servers: str | Iterable[str], **kwargs: Any) -> KafkaBroker:
        """Shortcut for ``KafkaBroker(KafkaConfig.from_bootstrap(servers, **kwargs))``."""
        return cls(KafkaConfig.from_bootstrap(servers, **kwargs))

    def __repr__(self) -> str:
        return f"KafkaBroker({self.config.bootstrap_servers!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"{self!r} is closed")

    def _get_producer(self) -> Any:
        with self._lock:
            self._check_open()
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = _new_client(
                    KafkaProducer,
                    self.config.producer_config(),
                    "producer",
                    self.config.bootstrap_servers,
                )
                logger.info("Kafka producer connected to %s", self.config.bootstrap_servers)
            return self._producer

    # ------------------------------------------------------------------ publish

    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        """Send ``messages`` in per-key waves (see the module docstring); one result each.

        Raises :class:`BrokerUnavailableError` when no producer can be created (nothing was
        sent) and :class:`BrokerClosedError` after :meth:`close`.
        """
        if not messages:
            self._check_open()
            return []
        producer = self._get_producer()
        chains: dict[tuple[str, str], list[int]] = {}
        for index, message in enumerate(messages):
            chains.setdefault((message.topic, message.key), []).append(index)
        errors: dict[int, BrokerError | None] = {}
        depth = max(len(chain) for chain in chains.values())
        for wave in range(depth):
            batch = [
                chain[wave]
                for chain in chains.values()
                if wave < len(chain) and all(errors.get(i) is None for i in chain[:wave])
            ]
            if not batch:
                break
            errors.update(self._send_wave(producer, messages, batch))
        results = []
        for chain in chains.values():
            failed: BrokerError | None = None
            for index in chain:
                if failed is not None:
                    errors[index] = _same_kind(
                        failed,
                        f"not sent: an earlier message of key {messages[index].key!r} "
                        f"failed ({failed})",
                    )
                elif errors[index] is not None:
                    failed = errors[index]
        for index, message in enumerate(messages):
            results.append(SendResult(message=message, error=errors[index]))
        return results

    def _send_wave(
        self, producer: Any, messages: Sequence[BrokerMessage], batch: list[int]
    ) -> dict[int, BrokerError | None]:
        """``send()`` each message of ``batch``, one ``flush()``, then read every future."""
        from kafka.errors import IllegalStateError

        outcome: dict[int, BrokerError | None] = {}
        futures: dict[int, Any] = {}
        outage: BrokerError | None = None
        for index in batch:
            message = messages[index]
            if outage is not None:
                # The broker did not answer for an earlier message of this wave: sending
                # more would only block max_block_ms each.
                outcome[index] = BrokerUnavailableError(str(outage))
                continue
            try:
                futures[index] = producer.send(
                    message.topic,
                    value=message.value,
                    key=message.key.encode("utf-8"),
                    headers=[(k, v.encode("utf-8")) for k, v in message.headers.items()],
                )
            except IllegalStateError as exc:
                raise BrokerClosedError(f"{self!r} is closed") from exc
            except Exception as exc:
                error = _translate(exc, f"send to {message.topic!r} failed")
                outcome[index] = error
                if isinstance(error, BrokerUnavailableError):
                    outage = error
        if futures:
            try:
                producer.flush(timeout=self.config.flush_timeout)
            except Exception as exc:
                logger.warning("Kafka flush did not complete: %s", exc)
        for index, future in futures.items():
            topic = messages[index].topic
            if not future.is_done:
                outcome[index] = BrokerUnavailableError(
                    f"send to {topic!r} not acknowledged within {self.config.flush_timeout:.0f} s"
                )
            elif future.failed():
                outcome[index] = _translate(future.exception, f"send to {topic!r} failed")
            else:
                outcome[index] = None
        return outcome

    # ------------------------------------------------------------------ topics

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create ``topic`` with the configured partitions unless it exists.

        Kafka creates a consumer group when its first member joins, so ``group`` needs
        nothing here.
        """
        from kafka.errors import TopicAlreadyExistsError

        with self._admin_lock:
            self._check_open()
            if self._admin is None:
                from kafka import KafkaAdminClient

                self._admin = _new_client(
                    KafkaAdminClient,
                    self.config.admin_config(),
                    "admin client",
                    self.config.bootstrap_servers,
                )
            spec = {
                "num_partitions": self.config.num_partitions,
                "replication_factor": self.config.replication_factor,
            }
            try:
                self._admin.create_topics({topic: spec}, timeout_ms=self.config.request_timeout_ms)
                logger.info("created Kafka topic %s (%s)", topic, spec)
            except TopicAlreadyExistsError:
                pass
            except Exception as exc:
                raise _translate(exc, f"cannot create Kafka topic {topic!r}") from exc

    # ------------------------------------------------------------------ consume

    def subscribe(self, topic: str, group: str, consumer_name: str) -> KafkaSubscription:
        """Join ``group`` on ``topic`` with a consumer of its own (creating the topic)."""
        self._check_open()
        self.ensure_topic(topic, group)
        subscription = KafkaSubscription(
            self.config, topic=topic, group=group, consumer_name=consumer_name
        )
        with self._lock:
            if self._closed:
                subscription.close()
                raise BrokerClosedError(f"{self!r} is closed")
            self._subscriptions = [s for s in self._subscriptions if not s.closed]
            self._subscriptions.append(subscription)
        return subscription

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Flush and close the producer, close the admin client, stop every subscription."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            producer, self._producer = self._producer, None
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
        if producer is not None:
            try:
                producer.flush(timeout=self.config.flush_timeout)
            except Exception as exc:
                logger.warning("Kafka producer flush on close failed: %s", exc)
            try:
                producer.close(timeout=self.config.request_timeout_ms / 1000)
            except Exception as exc:
                logger.warning("Kafka producer close failed: %s", exc)
        with self._admin_lock:
            admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception as exc:
                logger.warning("Kafka admin client close failed: %s", exc)


# --------------------------------------------------------------------------- subscription


class KafkaSubscription(Subscription):
    """One ``KafkaConsumer`` in a group, owned by the thread that receives from it.

    ``Delivery.receipt`` is ``(partition, offset, assignment_epoch)``. The epoch counts how
    often this member was assigned the partition: an ack for a delivery from before a
    rebalance is not committed (the partition's new owner, maybe this member again, reads
    the message again from the last committed offset, and handling is idempotent).
    """

    def __init__(self, config: KafkaConfig, *, topic: str, group: str, consumer_name: str) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.topic = topic
        self.group = group
        self.consumer_name = consumer_name
        self._config = config
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._consumer_closed = False
        self._epochs: dict[int, int] = {}
        self._next_epoch = 1
        subscription = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                subscription._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                subscription._on_assigned(assigned)

        self._consumer = _new_client(
            KafkaConsumer,
            config.consumer_config(group=group, consumer_name=consumer_name),
            f"consumer ({group}/{consumer_name})",
            config.bootstrap_servers,
        )
        self._consumer.subscribe([topic], listener=_Listener())
        logger.info("Kafka consumer %s joined group %s on %s", consumer_name, group, topic)

    def __repr__(self) -> str:
        return f"KafkaSubscription({self.topic!r}, {self.group!r}, {self.consumer_name!r})"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _on_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self._epochs.pop(tp.partition, None)
        logger.info("%r: partitions revoked %s", self, sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self._epochs[tp.partition] = self._next_epoch
            self._next_epoch += 1
        logger.info("%r: partitions assigned %s", self, sorted(tp.partition for tp in assigned))

    def receive(self, *, timeout: float, max_messages: int = 100) -> list[Delivery]:
        """Poll in short slices until something arrives, ``timeout`` passes or we close."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            try:
                while not self._closed.is_set():
                    remaining = deadline - time.monotonic()
                    slice_ms = int(max(0.0, min(remaining, _POLL_SLICE_SECONDS)) * 1000)
                    try:
                        batches = self._consumer.poll(
                            timeout_ms=slice_ms, max_records=max(1, max_messages)
                        )
                    except (KafkaError, OSError) as exc:
                        raise _as_unavailable(exc, f"{self!r}: poll failed") from exc
                    deliveries = self._deliveries(batches)
                    if deliveries or remaining <= 0:
                        return deliveries
                return []
            finally:
                self._close_consumer_if_requested()

    def _deliveries(self, batches: Mapping[Any, list[Any]]) -> list[Delivery]:
        deliveries = []
        for tp, records in batches.items():
            epoch = self._epochs.get(tp.partition, 0)
            for record in records:
                deliveries.append(
                    Delivery(
                        topic=record.topic,
                        key=(record.key or b"").decode("utf-8", errors="replace"),
                        value=record.value if record.value is not None else b"",
                        headers={
                            k: (v or b"").decode("utf-8", errors="replace")
                            for k, v in (record.headers or [])
                        },
                        receipt=(record.partition, record.offset, epoch),
                    )
                )
        return deliveries

    def ack(self, delivery: Delivery) -> None:
        """Commit ``offset + 1`` of the delivery's partition, synchronously."""
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import CommitFailedError, KafkaError

        partition, offset, epoch = delivery.receipt
        with self._lock:
            try:
                if self._consumer_closed:
                    raise BrokerClosedError(f"{self!r} is closed")
                if self._epochs.get(partition) != epoch:
                    logger.info(
                        "%r: not committing offset %d of partition %d: reassigned since "
                        "delivery; it will be delivered again",
                        self,
                        offset,
                        partition,
                    )
                    return
                tp = TopicPartition(delivery.topic, partition)
                try:
                    self._consumer.commit(
                        {tp: OffsetAndMetadata(offset + 1, "", -1)},
                        timeout_ms=self._config.request_timeout_ms,
                    )
                except CommitFailedError as exc:
                    # The group rebalanced: the partition's next owner reads it again.
                    logger.warning("%r: commit of %s@%d failed: %s", self, tp, offset, exc)
                except (KafkaError, OSError) as exc:
                    raise _as_unavailable(exc, f"{self!r}: commit failed") from exc
            finally:
                self._close_consumer_if_requested()

    def close(self) -> None:
        """Stop receiving; the consumer leaves the group now or when ``receive`` returns."""
        self._closed.set()
        if self._lock.acquire(blocking=False):
            try:
                self._close_consumer_if_requested()
            finally:
                self._lock.release()

    def _close_consumer_if_requested(self) -> None:
        """Close the consumer (caller holds ``_lock``) once ``close()`` was called."""
        if not self._closed.is_set() or self._consumer_closed:
            return
        self._consumer_closed = True
        try:
            self._consumer.close(autocommit=False, timeout_ms=self._config.request_timeout_ms)
        except Exception as exc:
            logger.warning("%r: close failed: %s", self, exc)
        logger.info("Kafka consumer %s left group %s", self.consumer_name, self.group)


def _as_unavailable(exc: BaseException, what: str) -> BrokerError:
    error = _translate(exc, what)
    if isinstance(error, BrokerUnavailableError):
        return error
    return BrokerUnavailableError(str(error))
