"""KafkaSubscription: one kafka-python consumer in a group, owned by one thread.

**A group that does not settle is left and joined again.** kafka-python's consumer can stay
out of a working group for good: members were seen looping on "SyncGroup failed due to
coordinator rebalance" for minutes, and after a broker restarted without its state the
topic is gone and nobody is assigned anything. ``receive`` therefore watches its consumer:
when it has been outside a stable group, or in one without any partition while its topic is
unknown to it, for longer than ``KafkaConfig.group_settle_timeout_ms``, the subscription
creates the topic again (if missing), closes the consumer and joins with a new one (a fresh
member), logging a WARNING each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from outboxkit.broker import Delivery, Subscription
from outboxkit.brokers.kafka.clients import new_client
from outboxkit.brokers.kafka.config import KafkaConfig
from outboxkit.brokers.kafka.errors import as_unavailable
from outboxkit.errors import BrokerClosedError, BrokerError, BrokerUnavailableError

logger = logging.getLogger(__name__)

#: Slice of a ``receive`` poll: how quickly a ``close()`` from another thread is noticed.
_POLL_SLICE_SECONDS = 0.2


class KafkaSubscription(Subscription):
    """One ``KafkaConsumer`` in a group, owned by the thread that receives from it.

    ``Delivery.receipt`` is ``(partition, offset, assignment_epoch)``. The epoch counts how
    often this member was assigned the partition: an ack for a delivery from before a
    rebalance is not committed (the partition's new owner, maybe this member again, reads
    the message again from the last committed offset, and handling is idempotent).

    ``ensure_topic`` (given by :class:`KafkaBroker`) creates the topic when the watchdog
    described in the module docstring finds it missing.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        topic: str,
        group: str,
        consumer_name: str,
        ensure_topic: Callable[[str], None] | None = None,
        interrupted: threading.Event | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.consumer_name = consumer_name
        self._config = config
        self._ensure_topic = ensure_topic
        #: The broker's: building a consumer gives up when it is set (see ``clients``).
        self._interrupted = interrupted
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._consumer_closed = False
        self._epochs: dict[int, int] = {}
        self._next_epoch = 1
        #: Since when (monotonic) the consumer has been out of a settled group, if it is.
        self._unsettled_since: float | None = None
        #: The topic's id when partitions were last assigned (a new id: the topic was
        #: created anew).
        self._topic_id: Any = None
        self._settle_timeout = config.group_settle_timeout_ms / 1000
        #: How often the consumer was replaced because its group did not settle.
        self.recreations = 0
        self._consumer = self._new_consumer()
        logger.info("Kafka consumer %s joined group %s on %s", consumer_name, group, topic)

    def _new_consumer(self) -> Any:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        subscription = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                subscription._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                subscription._on_assigned(assigned)

        consumer = new_client(
            KafkaConsumer,
            self._config.consumer_config(group=self.group, consumer_name=self.consumer_name),
            f"consumer ({self.group}/{self.consumer_name})",
            self._config.bootstrap_servers,
            self._interrupted,
        )
        consumer.subscribe([self.topic], listener=_Listener())
        return consumer

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
        self._restart_recreated_topic(assigned)

    def _restart_recreated_topic(self, assigned: Any) -> None:
        """Read a topic that was created anew (same name, new id) from its beginning.

        kafka-python 3 keeps a partition's position across a rebalance when the member
        keeps the partition. After a broker restarted empty, that position (say 2) points
        past the records of the new, empty log, so its first records would be skipped.
        """
        try:
            topic_id = self._consumer._client.cluster.topic_id(self.topic)
        except Exception:
            return
        if topic_id is None:
            return
        previous, self._topic_id = self._topic_id, topic_id
        if previous is None or previous == topic_id or not assigned:
            return
        logger.warning(
            "%r: topic %s was created anew (id %s, was %s), as by a broker restarted without "
            "its state; reading its partitions from the beginning",
            self,
            self.topic,
            topic_id,
            previous,
        )
        self._consumer.seek_to_beginning(*assigned)

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
                    if deliveries:
                        self._unsettled_since = None
                        return deliveries
                    self._watch_settling()
                    if remaining <= 0:
                        return deliveries
                return []
            finally:
                self._close_consumer_if_requested()

    # ------------------------------------------------------------------ settle watchdog

    def _unsettled_reason(self) -> str | None:
        """Why the consumer is not in a working group, or ``None`` when it is.

        A stable member without partitions is fine while its topic is known (a group with
        more members than partitions has idle members). kafka-python exposes the group state
        only on private attributes; any surprise there reads as "settled".
        """
        try:
            coordinator = self._consumer._coordinator
            if not coordinator.stable():
                return "its consumer group has not settled"
            if self._consumer.assignment():
                return None
            if self._consumer._client.cluster.partitions_for_topic(self.topic) is None:
                return "it has no partition and the broker does not know its topic"
        except Exception:
            return None
        return None

    def _watch_settling(self) -> None:
        """Replace the consumer once it stayed unsettled too long (caller holds ``_lock``)."""
        reason = self._unsettled_reason()
        now = time.monotonic()
        if reason is None:
            self._unsettled_since = None
            self._settle_timeout = self._config.group_settle_timeout_ms / 1000
            return
        if self._unsettled_since is None:
            self._unsettled_since = now
            return
        waited = now - self._unsettled_since
        if waited < self._settle_timeout:
            return
        self._unsettled_since = None
        # A new member's join is itself a rebalance: give each next one longer, so
        # replacing members can never keep a slow group from settling.
        self._settle_timeout = min(
            self._settle_timeout * 2, 8 * self._config.group_settle_timeout_ms / 1000
        )
        logger.warning(
            "%r: %s for %.0f s; creating the topic if missing and rejoining with a new consumer",
            self,
            reason,
            waited,
        )
        if self._ensure_topic is not None:
            try:
                self._ensure_topic(self.topic)
            except BrokerError as exc:
                raise BrokerUnavailableError(
                    f"{self!r}: group did not settle and the topic cannot be ensured: {exc}"
                ) from exc
        # Leave first, then join: a member leaving after the new one joined would start
        # yet another rebalance under it.
        self._epochs.clear()  # deliveries of the old member are never committed
        self.recreations += 1
        self._close_quietly(self._consumer)
        try:
            self._consumer = self._new_consumer()
        except BrokerError:
            # No consumer left: this subscription is over; the caller subscribes again
            # (the engine does so after any BrokerUnavailableError).
            self._consumer_closed = True
            self._closed.set()
            raise

    def _close_quietly(self, consumer: Any) -> None:
        try:
            consumer.close(autocommit=False, timeout_ms=self._config.request_timeout_ms)
        except Exception as exc:
            logger.warning("%r: close failed: %s", self, exc)

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
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Commit, in one synchronous request, the highest ``offset + 1`` of each partition.

        Deliveries of a partition reassigned since they were received (their assignment
        epoch is not the current one) are left out, exactly as :meth:`ack` leaves them: the
        partition's owner reads them again from the last committed offset.
        """
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import CommitFailedError, KafkaError

        if not deliveries:
            return
        with self._lock:
            try:
                if self._consumer_closed:
                    raise BrokerClosedError(f"{self!r} is closed")
                offsets: dict[Any, int] = {}
                stale: set[int] = set()
                for delivery in deliveries:
                    partition, offset, epoch = delivery.receipt
                    if self._epochs.get(partition) != epoch:
                        stale.add(partition)
                        continue
                    tp = TopicPartition(delivery.topic, partition)
                    offsets[tp] = max(offsets.get(tp, 0), offset + 1)
                if stale:
                    logger.info(
                        "%r: not committing partitions %s: reassigned since delivery; their "
                        "messages will be delivered again",
                        self,
                        sorted(stale),
                    )
                if not offsets:
                    return
                try:
                    self._consumer.commit(
                        {tp: OffsetAndMetadata(end, "", -1) for tp, end in offsets.items()},
                        timeout_ms=self._config.request_timeout_ms,
                    )
                except CommitFailedError as exc:
                    # The group rebalanced: the partitions' next owners read them again.
                    logger.warning("%r: commit of %s failed: %s", self, offsets, exc)
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
        self._close_quietly(self._consumer)
        logger.info("Kafka consumer %s left group %s", self.consumer_name, self.group)
