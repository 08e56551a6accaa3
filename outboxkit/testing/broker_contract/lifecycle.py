"""Closing and health: ``close`` is idempotent, unblocks a waiting ``receive`` and ends
subscriptions and publishing; ``ping`` answers while the broker is open."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from outboxkit.broker import Broker, Subscription
from outboxkit.errors import BrokerClosedError
from outboxkit.testing.broker_contract.base import (
    BrokerContractBase,
    _messages,
    receive_until,
)


class BrokerLifecycleContract(BrokerContractBase):
    """``close`` of brokers and subscriptions, and ``ping``. Needs ``broker`` and
    ``make_broker`` (and ``unique``)."""

    # ------------------------------------------------------------------ closing
    def test_close_from_another_thread_unblocks_a_receive(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        consumer = subscribe(topic, f"g.{unique}", "m")
        receiving = threading.Event()

        def close_while_receiving() -> None:
            # the receive below has been called (waited for), and has had 0.5 s to block
            receiving.wait(30)
            time.sleep(0.5)
            consumer.close()

        closer = threading.Thread(target=close_while_receiving, name="contract-closer")
        closer.start()
        try:
            receiving.set()
            started = time.monotonic()
            assert consumer.receive(timeout=30) == []
            elapsed = time.monotonic() - started
        finally:
            closer.join(30)
        assert not closer.is_alive()
        # it was blocked until the close came (not returned before), and not for its 30 s
        assert elapsed >= 0.5, f"receive returned after {elapsed:.2f} s, before the close"
        assert elapsed < self.close_unblock_seconds, f"receive returned after {elapsed:.1f} s"
        self._publish_ok(broker, _messages(topic, 2))
        assert consumer.receive(timeout=0.5) == []

    def test_close_is_idempotent(
        self,
        other_broker: Callable[[], Broker],
        unique: str,
    ) -> None:
        instance = other_broker()
        topic = self.topic_name(unique)
        instance.ensure_topic(topic)
        consumer = instance.subscribe(topic, f"g.{unique}", "m")
        consumer.close()
        consumer.close()
        assert consumer.receive(timeout=0.1) == []
        instance.close()
        instance.close()

    def test_publish_after_close_raises_broker_closed(
        self, other_broker: Callable[[], Broker], unique: str
    ) -> None:
        instance = other_broker()
        topic = self.topic_name(unique)
        instance.ensure_topic(topic)
        instance.close()
        with pytest.raises(BrokerClosedError):
            instance.publish(_messages(topic, 1))

    def test_subscriptions_stop_receiving_when_the_broker_closes(
        self,
        broker: Broker,
        other_broker: Callable[[], Broker],
        unique: str,
    ) -> None:
        instance = other_broker()
        topic = self.topic_name(unique)
        instance.ensure_topic(topic)
        consumer = instance.subscribe(topic, f"g.{unique}", "m")
        try:
            instance.close()
            self._publish_ok(broker, _messages(topic, 2))
            with contextlib.suppress(BrokerClosedError):
                assert consumer.receive(timeout=0.5) == []
        finally:
            consumer.close()

    # ------------------------------------------------------------------ health (ping)
    def test_ping_answers_while_the_broker_is_reachable_and_changes_nothing(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        # Given messages waiting on a topic
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        self._publish_ok(broker, _messages(topic, 3))
        # When health checks ping the broker, again and again
        for _ in range(3):
            broker.ping()
        # Then a new group still reads all that was published: the pings consumed or
        # acknowledged nothing (that ping really asks the server is the outage suite's
        # part: an unreachable broker's ping raises)
        reader = subscribe(topic, f"g.{unique}", "m")
        received = receive_until([reader], 3, self._deadline(self.receive_deadline))
        assert sorted(d.headers["seq"] for _, d in received) == ["0", "1", "2"]

    def test_ping_after_close_raises_broker_closed(
        self, other_broker: Callable[[], Broker]
    ) -> None:
        instance = other_broker()
        instance.ping()
        instance.close()
        with pytest.raises(BrokerClosedError):
            instance.ping()
