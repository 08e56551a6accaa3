"""``ConfluentKafkaSubscription``: one librdkafka ``Consumer`` in a group.

**Offsets.** ``enable.auto.commit`` and ``enable.auto.offset.store`` are off: an offset is
committed only by :meth:`~ConfluentKafkaSubscription.ack` (synchronously, ``offset + 1``),
after the event was handled; :meth:`~ConfluentKafkaSubscription.ack_many` commits the
highest ``offset + 1`` of each partition of a batch in one request.

**Rebalances.** ``Delivery.receipt`` is ``(partition, offset, assignment_epoch)``; the epoch
counts how often this member was assigned the partition. An ack for a delivery from before
a rebalance is not committed: the partition's new owner (maybe this member again) reads the
message again from the last committed offset, and handling is idempotent.

**Thread safety.** A librdkafka consumer must not be closed while another thread polls it,
so the consumer is used only under the subscription's lock. :meth:`close` from another
thread sets a flag (and closes the consumer at once if nobody is using it); ``receive`` polls
in short slices, notices the flag and closes the consumer itself.

**Outages.** librdkafka reconnects on its own and reports a lost cluster only through its
error callback (``_ALL_BROKERS_DOWN``); ``receive`` turns that report into one
:class:`~outboxkit.errors.BrokerUnavailableError` when nothing could be received.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from outboxkit.broker import Delivery, Subscription
from outboxkit.brokers.confluent.config import ConfluentKafkaConfig
from outboxkit.brokers.confluent.errors import error_of, translate, translate_exception
from outboxkit.errors import BrokerClosedError, BrokerUnavailableError, ConfigurationError

if TYPE_CHECKING:  # confluent-kafka's stubs name the header shapes in a private module
    from confluent_kafka._types import HeadersType

__all__ = ["LIBRDKAFKA_LOGGER", "ConfluentKafkaSubscription"]

logger = logging.getLogger(__name__)

#: librdkafka's own log lines go here instead of stderr (confluent-kafka's ``logger``).
LIBRDKAFKA_LOGGER = logging.getLogger("outboxkit.brokers.confluent.librdkafka")

#: Slice of a ``receive`` poll: how quickly a ``close()`` from another thread is noticed.
_POLL_SLICE_SECONDS = 0.2

#: Error-callback reports meaning "the cluster cannot be reached right now".
_CLUSTER_DOWN = frozenset(
    {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._AUTHENTICATION}
)

#: A commit refused because the group moved on: the partition's next owner reads it again.
_REBALANCED = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._NO_OFFSET,
    }
)


class ConfluentKafkaSubscription(Subscription):
    """One ``confluent_kafka.Consumer`` in a group, owned by the thread that receives."""

    def __init__(
        self, config: ConfluentKafkaConfig, *, topic: str, group: str, consumer_name: str
    ) -> None:
        self.topic = topic
        self.group = group
        self.consumer_name = consumer_name
        self._config = config
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._consumer_closed = False
        self._epochs: dict[int, int] = {}
        self._next_epoch = 1
        self._down: KafkaError | None = None
        settings = config.consumer_config(group=group, consumer_name=consumer_name)
        settings["error_cb"] = self._on_error
        settings["logger"] = LIBRDKAFKA_LOGGER
        try:
            self._consumer = Consumer(settings)
        except (KafkaException, TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid librdkafka consumer settings: {exc}") from exc
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        logger.info("Kafka consumer %s joining group %s on %s", consumer_name, group, topic)

    def __repr__(self) -> str:
        return f"ConfluentKafkaSubscription({self.topic!r}, {self.group!r}, {self.consumer_name!r})"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------------ callbacks
    # librdkafka calls these from inside consume(), i.e. in the receiving thread.

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() in _CLUSTER_DOWN:
            logger.warning("%r: %s", self, error)
            self._down = error
        else:
            logger.info("%r: %s", self, error)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._epochs[tp.partition] = self._next_epoch
            self._next_epoch += 1
        logger.info("%r: partitions assigned %s", self, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._epochs.pop(tp.partition, None)
        logger.info("%r: partitions revoked %s", self, sorted(tp.partition for tp in partitions))

    # ------------------------------------------------------------------ receive

    def receive(self, *, timeout: float, max_messages: int = 100) -> list[Delivery]:
        """Poll in short slices until something arrives, ``timeout`` passes or we close."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            try:
                while not self._closed.is_set():
                    remaining = deadline - time.monotonic()
                    slice_seconds = max(0.0, min(remaining, _POLL_SLICE_SECONDS))
                    try:
                        messages = self._consumer.consume(
                            num_messages=max(1, max_messages), timeout=slice_seconds
                        )
                    except (KafkaException, RuntimeError) as exc:
                        raise _as_unavailable(exc, f"{self!r}: poll failed") from exc
                    deliveries = self._deliveries(messages)
                    if deliveries:
                        self._down = None
                        return deliveries
                    down, self._down = self._down, None
                    if down is not None:
                        raise BrokerUnavailableError(
                            f"{self!r}: cannot reach {self._config.bootstrap_servers}: {down}"
                        )
                    if remaining <= 0:
                        return []
                return []
            finally:
                self._close_consumer_if_requested()

    def _deliveries(self, messages: Sequence[Message]) -> list[Delivery]:
        deliveries = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_message_error(error)
                continue
            partition = message.partition()
            offset = message.offset()
            if partition is None or offset is None:
                continue
            key = message.key()
            value = message.value()
            deliveries.append(
                Delivery(
                    topic=message.topic() or self.topic,
                    key=_text(key),
                    value=value if value is not None else b"",
                    headers=_headers(message.headers()),
                    receipt=(partition, offset, self._epochs.get(partition, 0)),
                )
            )
        return deliveries

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        translated = translate(error, f"{self!r}: consume failed")
        if isinstance(translated, BrokerUnavailableError) and (
            error.fatal() or error.code() in _CLUSTER_DOWN or error.code() < 0
        ):
            raise translated
        # A partition-level report (unknown topic while metadata catches up, ...):
        # librdkafka keeps trying on its own.
        logger.warning("%s", translated)

    # ------------------------------------------------------------------ ack

    def ack(self, delivery: Delivery) -> None:
        """Commit ``offset + 1`` of the delivery's partition, synchronously."""
        self._commit([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Commit the highest ``offset + 1`` of each partition of the batch in one request."""
        if deliveries:
            self._commit(deliveries)

    def _commit(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            try:
                if self._consumer_closed:
                    raise BrokerClosedError(f"{self!r} is closed")
                highest: dict[tuple[str, int], int] = {}
                for delivery in deliveries:
                    partition, offset, epoch = delivery.receipt
                    if self._epochs.get(partition) != epoch:
                        logger.info(
                            "%r: not committing offset %d of partition %d: reassigned since "
                            "delivery; it will be delivered again",
                            self,
                            offset,
                            partition,
                        )
                        continue
                    place = (delivery.topic, partition)
                    highest[place] = max(highest.get(place, -1), offset)
                if highest:
                    self._commit_offsets(
                        [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]
                    )
            finally:
                self._close_consumer_if_requested()

    def _commit_offsets(self, offsets: list[TopicPartition]) -> None:
        what = f"{self!r}: commit of {[(tp.partition, tp.offset) for tp in offsets]} failed"
        try:
            committed = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = error_of(exc)
            if error is not None and error.code() in _REBALANCED:
                logger.warning("%s: %s (the partition's next owner reads it again)", what, error)
                return
            raise _as_unavailable(exc, what) from exc
        except RuntimeError as exc:
            raise _as_unavailable(exc, what) from exc
        for tp in committed or []:
            if tp.error is None:
                continue
            if tp.error.code() in _REBALANCED:
                logger.warning("%s: %s", what, tp.error)
                continue
            raise BrokerUnavailableError(f"{what}: {tp.error}")

    # ------------------------------------------------------------------ close

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
            self._consumer.close()
        except Exception as exc:
            logger.warning("%r: close failed: %s", self, exc)
        logger.info("Kafka consumer %s left group %s", self.consumer_name, self.group)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, str):
        return value
    return (value or b"").decode("utf-8", errors="replace")


def _headers(raw: HeadersType | None) -> dict[str, str]:
    """A consumed message's headers (a list of pairs; values bytes or ``None``) as text."""
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {name: _text(value) for name, value in items}


def _as_unavailable(exc: BaseException, what: str) -> BrokerUnavailableError:
    error = translate_exception(exc, what)
    if isinstance(error, BrokerUnavailableError):
        return error
    return BrokerUnavailableError(str(error))
