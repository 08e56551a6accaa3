"""KafkaBroker: the shared producer, per-key publish waves, topic creation, subscriptions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from outboxkit.broker import Broker, BrokerMessage, SendResult
from outboxkit.brokers.kafka.clients import new_client
from outboxkit.brokers.kafka.config import KafkaConfig
from outboxkit.brokers.kafka.errors import same_kind, translate
from outboxkit.brokers.kafka.subscription import KafkaSubscription
from outboxkit.errors import BrokerClosedError, BrokerError, BrokerUnavailableError

logger = logging.getLogger(__name__)


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

                self._producer = new_client(
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
                    errors[index] = same_kind(
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
                error = translate(exc, f"send to {message.topic!r} failed")
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
                outcome[index] = translate(future.exception, f"send to {topic!r} failed")
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

                self._admin = new_client(
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
                raise translate(exc, f"cannot create Kafka topic {topic!r}") from exc

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
