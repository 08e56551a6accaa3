"""The Broker contract: what the relay and the consumer need from Kafka, Redis Streams, ...

The docstrings are the specification; ``outboxkit.testing.broker_contract`` checks every
implementation against them on a real server.

Thread safety: a :class:`Broker` is shared by every thread of a process (its ``publish`` may
be called concurrently). A :class:`Subscription` belongs to the one thread that consumes
from it; only its :meth:`Subscription.close` may be called from another thread.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from outboxkit.errors import BrokerError


@attrs.frozen(kw_only=True)
class BrokerMessage:
    """One message to send: ``topic`` is a Kafka topic or a Redis stream key."""

    topic: str
    key: str
    value: bytes
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class SendResult:
    """The broker's answer for one message of a batch.

    ``error`` is ``None`` only when the broker acknowledged the message durably (Kafka:
    ``acks=all``; Redis: ``XADD`` returned an id). Otherwise it is a
    :class:`~outboxkit.errors.BrokerUnavailableError` (nothing known to be wrong with the
    message: the broker could not be reached or did not answer in time: released
    uncounted), a :class:`~outboxkit.errors.PermanentRejectionError` (the broker refused
    this message for a reason no retry of it can fix, such as its size: ``dead`` at once)
    or another :class:`~outboxkit.errors.MessageRejectedError` (the broker refused this
    message, perhaps not for ever: a counted retry).
    """

    message: BrokerMessage
    error: BrokerError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen(kw_only=True)
class Delivery:
    """One received message, to be acknowledged with :meth:`Subscription.ack`.

    ``delivery_count`` is how many times the broker has handed this message to the group
    (1 on first delivery) when the broker knows it, else 1. ``receipt`` is the broker's own
    handle (Kafka ``(partition, offset)``, Redis entry id) and means nothing to callers.
    """

    topic: str
    key: str
    value: bytes
    headers: Mapping[str, str]
    receipt: Any
    delivery_count: int = 1


class Subscription(abc.ABC):
    """A named member of a consumer group reading one topic.

    Used by one thread only. Messages not acknowledged are delivered again to some member
    of the group (after a rebalance for Kafka; for Redis Streams as soon as the member is
    known dead, else after the idle time), so a consumer that dies mid-message loses
    nothing.
    """

    @abc.abstractmethod
    def receive(self, *, timeout: float, max_messages: int = 100) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries, waiting at most ``timeout`` seconds.

        Returns an empty list on timeout and once the subscription is closed. Raises
        :class:`~outboxkit.errors.BrokerUnavailableError` when the broker cannot be reached.
        """

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a delivery after it was handled, so it is not delivered again.

        Deliveries of one partition/stream must be acknowledged in the order received.
        Raises :class:`~outboxkit.errors.BrokerUnavailableError` when the broker cannot be
        reached; the delivery then stays unacknowledged and will come again.
        """

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge a handled batch at once, in the order given (the order received).

        The same rules as :meth:`ack`, for several deliveries in as few round trips as the
        broker allows (Redis: one ``XACK`` per stream; Kafka: one offset commit covering the
        highest offset of each partition). On :class:`~outboxkit.errors.BrokerUnavailableError`
        any of them may stay unacknowledged and come again. The default acknowledges one by
        one; brokers override it.
        """
        for delivery in deliveries:
            self.ack(delivery)

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group and release the connection. Idempotent, callable from any thread.

        A :meth:`receive` blocked in another thread returns (with no deliveries) promptly.
        """


class Broker(abc.ABC):
    """A message broker the relay publishes to and consumers read from."""

    @abc.abstractmethod
    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        """Send a batch and return one result per message, in order.

        A message is reported ``ok`` only when the broker acknowledged it. Messages with
        the same key are never reordered: if one fails, the later messages of that key in
        the batch are not sent and are reported with the same kind of error, except that
        nothing is wrong with them when the earlier one was refused for good: a
        :class:`~outboxkit.errors.PermanentRejectionError` is followed by plain
        :class:`~outboxkit.errors.MessageRejectedError` results. Thread-safe.
        Raises :class:`~outboxkit.errors.BrokerClosedError` after :meth:`close`, and
        :class:`~outboxkit.errors.BrokerSetupError` (nothing sent) when the broker refuses
        the connection itself for good (a wrong password, a database it does not have).
        """

    @abc.abstractmethod
    def subscribe(self, topic: str, group: str, consumer_name: str) -> Subscription:
        """Join ``group`` on ``topic`` as ``consumer_name`` (stable across restarts).

        A new group starts at the beginning of the topic, so messages published before the
        first consumer existed are still delivered. Creates what is missing.
        """

    @abc.abstractmethod
    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        """Create the topic/stream (and the group, if given) unless it exists. Idempotent.

        Raises :class:`~outboxkit.errors.BrokerSetupError` when the broker refuses the
        credentials or the permission, or when the topic is missing and the broker was
        configured not to create topics; :class:`~outboxkit.errors.BrokerUnavailableError`
        when it cannot be reached.
        """

    def interrupt(self) -> None:
        """Make calls waiting to *connect* to the broker give up now.

        Called by :meth:`Engine.stop <outboxkit.engine.Engine.stop>` before it waits for its
        threads, so a thread stuck reaching an unreachable broker cannot hold the stop past
        its timeout. Calls blocked that way raise a :class:`~outboxkit.errors.BrokerError`;
        later connection attempts fail at once. Work on clients already connected (a
        send in flight, the acknowledgement of a handled batch) is left alone.
        Thread-safe and idempotent. The default does nothing (for brokers whose
        connection attempts are short anyway).
        """
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release every connection. Idempotent; subscriptions stop receiving."""

    def ping(self) -> None:
        """Return when the broker answers now; raise (ideally ``BrokerUnavailableError``) if not.

        Used by health checks, so it must be quick and change nothing on the broker. The
        default raises :class:`NotImplementedError`: a broker that cannot check itself is
        reported as "not judged" rather than guessed healthy or unhealthy.
        """
        raise NotImplementedError

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
