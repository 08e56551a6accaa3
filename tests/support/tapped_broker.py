"""A real broker whose subscriptions keep every delivery they hand out, headers included.

Not a mock: messages go through the real broker; the wrapper only records what came out, so
tests can check the broker headers the relay set.
"""

from __future__ import annotations

from collections.abc import Sequence

from outboxkit.broker import Broker, BrokerMessage, Delivery, SendResult, Subscription


class TappedSubscription(Subscription):
    """A real subscription that also keeps the headers of every delivery it received."""

    def __init__(self, inner: Subscription, seen: list[Delivery]) -> None:
        self._inner = inner
        self._seen = seen

    def receive(self, *, timeout: float, max_messages: int = 100) -> list[Delivery]:
        deliveries = self._inner.receive(timeout=timeout, max_messages=max_messages)
        self._seen.extend(deliveries)
        return deliveries

    def ack(self, delivery: Delivery) -> None:
        self._inner.ack(delivery)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        self._inner.ack_many(deliveries)

    def close(self) -> None:
        self._inner.close()


class TappedBroker(Broker):
    """A real broker whose subscriptions record what they deliver (headers included)."""

    def __init__(self, inner: Broker) -> None:
        self._inner = inner
        self.received: list[Delivery] = []

    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        return self._inner.publish(messages)

    def subscribe(self, topic: str, group: str, consumer_name: str) -> Subscription:
        inner = self._inner.subscribe(topic, group, consumer_name)
        return TappedSubscription(inner, self.received)

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        self._inner.ensure_topic(topic, group)

    def close(self) -> None:
        self._inner.close()
