"""``ConfluentKafkaBroker``: the producer side of the librdkafka (confluent-kafka) broker.

**Per-key order.** The :class:`~outboxkit.broker.Broker` contract says a failed message is
never overtaken by a later one of its key: the later ones must not be *sent*. librdkafka's
idempotent producer (``enable.idempotence=true``, on by default here) keeps a partition in
order across its own retries, so handing it a whole batch at once and marking the messages
behind a failed one as failed would be enough if a failure always took the rest of its
partition down with it. It does not:

* a permanent broker error on one request (``INVALID_RECORD``, ``MSG_SIZE_TOO_LARGE`` from a
  broker with a lower limit, ...) fails that request's messages, after which librdkafka
  *bumps the producer epoch and carries on*: the next request of the same partition, holding
  later messages of the same key, is written. Only ``enable.gapless.guarantee=true``
  (experimental) turns that gap into a fatal error, which would kill the shared producer on
  every bad message and could not be counted against the bad row alone;
* ``message.timeout.ms`` is explicitly outside the gapless guarantee: a message timed out
  in the queue by one age scan leaves the one enqueued a moment after it to be sent once
  the broker is back.

Marking the later messages "failed" afterwards would then report as unsent what the broker
already holds, and the relay's retry of the failed one would land behind them. So
:meth:`ConfluentKafkaBroker.publish` sends in **waves**, like the kafka-python broker: wave
*n* holds the *n*-th message of every key still in good standing; each wave is produced in
one go and waited for (``flush`` ignores ``linger.ms``), and a key whose message failed takes
no part in later waves. A batch of distinct keys is one wave at full librdkafka speed; the
number of waves is the largest number of messages one key has in the batch.

**Producer replacement.** After a fatal error, a delivery timeout, a lost producer id, or a
wave whose reports did not all arrive, the shared producer is retired and the next wave or
publish builds a new one (see :func:`~outboxkit.brokers.confluent.errors.replaces_producer`).
Its messages are reported :class:`~outboxkit.errors.BrokerUnavailableError` (uncounted).

**Thread safety.** librdkafka's producer is thread-safe and shared by every publishing
thread. A wave waits for *its own* delivery reports by flushing in short slices, so threads
serve each other's callbacks and none waits for another's messages beyond its deadline.

**Bounded waits.** A wave waits at most ``delivery_timeout_ms`` (``message.timeout.ms``)
plus ``linger_ms`` plus one second; admin calls at most ``socket_timeout_ms``; connecting to
a broker at most ``connection_setup_timeout_ms``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from outboxkit.broker import Broker, BrokerMessage, SendResult
from outboxkit.brokers.confluent.config import ConfluentKafkaConfig
from outboxkit.brokers.confluent.errors import (
    error_of,
    replaces_producer,
    translate,
    translate_exception,
)
from outboxkit.brokers.confluent.subscription import (
    LIBRDKAFKA_LOGGER,
    ConfluentKafkaSubscription,
)
from outboxkit.brokers.waves import publish_in_waves
from outboxkit.errors import (
    BrokerClosedError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
)

__all__ = ["ConfluentKafkaBroker"]

logger = logging.getLogger(__name__)

#: One ``flush`` slice while a wave waits for its delivery reports.
_FLUSH_SLICE_SECONDS = 0.5


@attrs.define
class _ProducerSlot:
    """One librdkafka producer and what its error callback learned about it."""

    producer: Producer
    generation: int
    fatal: KafkaError | None = None
    retired: bool = False


def _record_report(
    reports: dict[int, KafkaError | None], index: int, error: KafkaError | None, message: Any
) -> None:
    """Delivery callback: runs in whichever thread serves the producer's queue."""
    reports[index] = error


class ConfluentKafkaBroker(Broker):
    """A :class:`~outboxkit.broker.Broker` on Kafka through librdkafka (``confluent-kafka``).

    Clients are created lazily: constructing a broker never touches the network.
    """

    def __init__(self, config: ConfluentKafkaConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._slot: _ProducerSlot | None = None
        self._generation = 0
        self._admin: AdminClient | None = None
        self._admin_lock = threading.Lock()
        self._closed = False
        self._subscriptions: list[ConfluentKafkaSubscription] = []

    @classmethod
    def from_bootstrap(cls, servers: str | Iterable[str], **kwargs: Any) -> ConfluentKafkaBroker:
        """Shortcut for ``ConfluentKafkaBroker(ConfluentKafkaConfig.from_bootstrap(...))``."""
        return cls(ConfluentKafkaConfig.from_bootstrap(servers, **kwargs))

    def __repr__(self) -> str:
        return f"ConfluentKafkaBroker({self.config.bootstrap_servers!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"{self!r} is closed")

    # ------------------------------------------------------------------ producer

    @property
    def producer_generation(self) -> int:
        """How many producers this broker has built (grows when one is replaced)."""
        return self._generation

    def _get_slot(self) -> _ProducerSlot:
        with self._lock:
            self._check_open()
            if self._slot is None:
                settings = self.config.producer_config()
                slot_box: list[_ProducerSlot] = []

                def on_error(error: KafkaError) -> None:
                    if error.fatal():
                        logger.error("librdkafka producer fatal error: %s", error)
                        if slot_box:
                            slot_box[0].fatal = error
                    else:
                        logger.info("librdkafka producer: %s", error)

                settings["error_cb"] = on_error
                settings["logger"] = LIBRDKAFKA_LOGGER
                try:
                    producer = Producer(settings)
                except (KafkaException, TypeError, ValueError) as exc:
                    raise ConfigurationError(
                        f"invalid librdkafka producer settings: {exc}"
                    ) from exc
                self._generation += 1
                self._slot = _ProducerSlot(producer=producer, generation=self._generation)
                slot_box.append(self._slot)
                logger.info(
                    "librdkafka producer #%d for %s created",
                    self._generation,
                    self.config.bootstrap_servers,
                )
            return self._slot

    def _retire(self, slot: _ProducerSlot, reason: str) -> None:
        """Stop using ``slot``'s producer; the next wave or publish builds a new one.

        Threads still waiting on it keep their reference and finish within their own
        deadline; a fatal producer is purged at once so they return without waiting.
        """
        with self._lock:
            if self._slot is slot:
                self._slot = None
            if slot.retired:
                return
            slot.retired = True
        logger.warning("replacing librdkafka producer #%d: %s", slot.generation, reason)
        if slot.fatal is not None:
            try:
                slot.producer.purge(in_queue=True, in_flight=True, blocking=False)
                slot.producer.poll(0)
            except Exception as exc:
                logger.warning("purging the fatal producer failed: %s", exc)

    # ------------------------------------------------------------------ publish

    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        """Send ``messages`` in per-key waves (see the module docstring); one result each.

        Raises :class:`BrokerClosedError` after :meth:`close` and
        :class:`~outboxkit.errors.ConfigurationError` when librdkafka refuses the settings.
        """
        if not messages:
            self._check_open()
            return []
        return publish_in_waves(
            messages,
            lambda batch: (self._send_wave(self._get_slot(), messages, batch), True),
            abandoned=lambda: BrokerUnavailableError("not sent: the batch was abandoned"),
        )

    def _send_wave(
        self, slot: _ProducerSlot, messages: Sequence[BrokerMessage], batch: list[int]
    ) -> dict[int, BrokerError | None]:
        """``produce()`` each message of ``batch``, then wait for their delivery reports."""
        producer = slot.producer
        outcome: dict[int, BrokerError | None] = {}
        reports: dict[int, KafkaError | None] = {}
        sent: list[int] = []
        outage: BrokerError | None = None
        replace: str | None = None
        for index in batch:
            message = messages[index]
            if outage is not None:
                # librdkafka refused an earlier message of this wave for a reason that is
                # not the message's: the rest would be refused the same way.
                outcome[index] = BrokerUnavailableError(f"not sent: {outage}")
                continue
            try:
                producer.produce(
                    message.topic,
                    value=message.value,
                    key=message.key.encode("utf-8"),
                    headers=[(k, v.encode("utf-8")) for k, v in message.headers.items()],
                    on_delivery=functools.partial(_record_report, reports, index),
                )
            except (KafkaException, BufferError, TypeError, ValueError) as exc:
                error = translate_exception(exc, f"produce to {message.topic!r} failed")
                outcome[index] = error
                cause = error_of(exc)
                if cause is not None and replaces_producer(cause):
                    replace = str(error)
                if isinstance(error, BrokerUnavailableError):
                    outage = error
            else:
                sent.append(index)
        deadline = time.monotonic() + self.config.flush_timeout
        while len(reports) < len(sent):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            producer.flush(min(left, _FLUSH_SLICE_SECONDS))
        for index in sent:
            topic = messages[index].topic
            if index not in reports:
                outcome[index] = BrokerUnavailableError(
                    f"send to {topic!r} not acknowledged within {self.config.flush_timeout:.0f} s"
                )
                replace = replace or "delivery reports did not arrive in time"
                continue
            report = reports[index]
            if report is None:
                outcome[index] = None
                continue
            outcome[index] = translate(report, f"send to {topic!r} failed")
            if replaces_producer(report):
                replace = replace or str(outcome[index])
        if slot.fatal is not None:
            replace = replace or f"fatal error {slot.fatal}"
        if replace is not None:
            self._retire(slot, replace)
        return outcome

    # ------------------------------------------------------------------ topics

    def _get_admin(self) -> AdminClient:
        if self._admin is None:
            settings = self.config.admin_config()
            settings["logger"] = LIBRDKAFKA_LOGGER
            try:
                self._admin = AdminClient(settings)
            except (KafkaException, TypeError, ValueError) as exc:
                raise ConfigurationError(f"invalid librdkafka admin settings: {exc}") from exc
        return self._admin

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create ``topic`` with the configured partitions unless it exists.

        Kafka creates a consumer group when its first member joins, so ``group`` needs
        nothing here.
        """
        with self._admin_lock:
            self._check_open()
            admin = self._get_admin()
            timeout = self.config.admin_timeout
            spec = NewTopic(
                topic,
                num_partitions=self.config.num_partitions,
                replication_factor=self.config.replication_factor,
            )
            what = f"cannot create Kafka topic {topic!r}"
            try:
                future = admin.create_topics(
                    [spec], request_timeout=timeout, operation_timeout=timeout
                )[topic]
                future.result(timeout=timeout + 5.0)
            except concurrent.futures.TimeoutError as exc:
                raise BrokerUnavailableError(f"{what}: no answer in {timeout:.0f} s") from exc
            except KafkaException as exc:
                error = error_of(exc)
                if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    return
                raise translate_exception(exc, what) from exc
            logger.info(
                "created Kafka topic %s (%d partitions, replication %d)",
                topic,
                self.config.num_partitions,
                self.config.replication_factor,
            )

    # ------------------------------------------------------------------ consume

    def subscribe(self, topic: str, group: str, consumer_name: str) -> ConfluentKafkaSubscription:
        """Join ``group`` on ``topic`` with a consumer of its own (creating the topic)."""
        self._check_open()
        self.ensure_topic(topic, group)
        subscription = ConfluentKafkaSubscription(
            self.config, topic=topic, group=group, consumer_name=consumer_name
        )
        with self._lock:
            if self._closed:
                subscription.close()
                raise BrokerClosedError(f"{self!r} is closed")
            self._subscriptions = [s for s in self._subscriptions if not s.closed]
            self._subscriptions.append(subscription)
        return subscription

    # ------------------------------------------------------------------ health

    def ping(self) -> None:
        """Ask the cluster for its metadata (health checks), within ``admin_timeout``."""
        with self._admin_lock:
            self._check_open()
            admin = self._get_admin()
            try:
                metadata = admin.list_topics(timeout=self.config.admin_timeout)
            except KafkaException as exc:
                raise translate_exception(exc, "cannot reach Kafka") from exc
        if not metadata.brokers:
            raise BrokerUnavailableError("Kafka answered with no brokers")

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Flush the producer, drop the admin client, stop every subscription."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            slot, self._slot = self._slot, None
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()
        if slot is not None:
            try:
                left = slot.producer.flush(self.config.flush_timeout)
            except Exception as exc:
                logger.warning("librdkafka producer flush on close failed: %s", exc)
            else:
                if left:
                    logger.warning("%d messages still unsent when closing %r", left, self)
        with self._admin_lock:
            self._admin = None
