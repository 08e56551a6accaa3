"""KafkaSubscription: one kafka-python consumer in a group, owned by one thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from outboxkit.broker import Delivery, Subscription
from outboxkit.brokers.kafka.clients import new_client
from outboxkit.brokers.kafka.config import KafkaConfig
from outboxkit.brokers.kafka.errors import as_unavailable
from outboxkit.errors import BrokerClosedError

logger = logging.getLogger(__name__)

#: Slice of a ``receive`` poll: how quickly a ``close()`` from another thread is noticed.
_POLL_SLICE_SECONDS = 0.2


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

        self._consumer = new_client(
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
                        raise as_unavailable(exc, f"{self!r}: poll failed") from exc
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
                    raise as_unavailable(exc, f"{self!r}: commit failed") from exc
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
