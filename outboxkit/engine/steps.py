""":meth:`~outboxkit.Engine.run_once`: one relay step and one consume step per served service,
in the calling thread (rq's burst mode), for tests and scripts.

The workers of each route are built once and kept between steps, each subscribed once; one
step is one step: nothing is claimed or received ahead of it. Broker and database outages
propagate, unlike in the threads, so a test sees them.
"""

from __future__ import annotations

from outboxkit.broker import Broker, Subscription
from outboxkit.consume.consumer import Consumer
from outboxkit.engine.parts import Parts
from outboxkit.engine.stats import StatsRecorder
from outboxkit.errors import RedeliveryRequested
from outboxkit.inbox.receipts import ReceiptApplier, receipts_group, receipts_topic
from outboxkit.relay.relay import Relay
from outboxkit.routing import Route


class Steps:
    """The single-step workers of one engine (one thread at a time)."""

    def __init__(self, parts: Parts, broker: Broker, member: str, stats: StatsRecorder) -> None:
        self.parts = parts
        self.broker = broker
        #: The consumer-group member name of the steps' subscriptions.
        self.member = member
        self.stats = stats
        self._relays: dict[str, Relay] = {}
        self._consumers: dict[str, tuple[Consumer, Subscription]] = {}
        self._receipts: dict[str, tuple[ReceiptApplier, Subscription]] = {}

    def run_once(
        self, relay_routes: list[Route], consumer_routes: list[Route], receive_timeout: float
    ) -> int:
        """Rows published plus deliveries handled by one step of every route."""
        work = 0
        for route in relay_routes:
            relay = self._relays.get(route.service)
            if relay is None:
                relay = self._relays[route.service] = self.parts.relay(route, prefetch=False)
            step = relay.run_once()
            self.stats.count_published(step.published)
            work += step.published
            if route.inbox:
                work += self._receipt_step(route)
        for route in consumer_routes:
            pair = self._consumers.get(route.service)
            if pair is None:
                self.broker.ensure_topic(route.topic, route.group)
                subscription = self.broker.subscribe(route.topic, route.group, self.member)
                consumer = self.parts.consumer(route, prefetch=False)
                pair = self._consumers[route.service] = (consumer, subscription)
            consumer, subscription = pair
            try:
                work += consumer.run_once(subscription, timeout=receive_timeout)
            except RedeliveryRequested:
                # A failed inbox attempt: subscribing again (next step) redelivers it.
                subscription.close()
                del self._consumers[route.service]
        return work

    def _receipt_step(self, route: Route) -> int:
        pair = self._receipts.get(route.service)
        if pair is None:
            topic, group = receipts_topic(route), receipts_group(route)
            self.broker.ensure_topic(topic, group)
            subscription = self.broker.subscribe(topic, group, self.member)
            pair = self._receipts[route.service] = (
                self.parts.receipt_applier(route),
                subscription,
            )
        applier, subscription = pair
        return applier.run_once(subscription, timeout=0.01)

    def close(self) -> None:
        """Give back a prefetched claim (none: steps prefetch nothing), finish pending
        marks, close the subscriptions."""
        for relay in self._relays.values():
            relay.close()
        for _, subscription in self._consumers.values():
            subscription.close()
        for _, subscription in self._receipts.values():
            subscription.close()
