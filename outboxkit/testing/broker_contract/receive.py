"""Subscribing and acknowledging: a new group reads what was published before it,
``ensure_topic`` is idempotent, and acknowledged messages (``ack``, ``ack_many``) are done."""

from __future__ import annotations

from collections.abc import Callable

from outboxkit.broker import Broker, Subscription
from outboxkit.testing.broker_contract.base import BrokerContractBase, _messages, receive_until


class BrokerReceiveContract(BrokerContractBase):
    """``ensure_topic``, ``subscribe``, ``receive``, ``ack`` and ``ack_many``. Needs
    ``broker`` (and ``unique``)."""

    # ------------------------------------------------------------------ subscribe and ack
    def test_a_consumer_created_after_publishing_receives_the_backlog(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        # Given messages published before any group exists (the XGROUP CREATE ... $ pitfall)
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        self._publish_ok(broker, _messages(topic, 10))
        # When a new group is created afterwards, explicitly and implicitly
        broker.ensure_topic(topic, f"explicit.{unique}")
        explicit = subscribe(topic, f"explicit.{unique}", "m")
        implicit = subscribe(topic, f"implicit.{unique}", "m")
        # Then both start at the beginning of the topic
        deadline = self._deadline(self.receive_deadline)
        assert len(receive_until([explicit], 10, deadline)) == 10
        assert len(receive_until([implicit], 10, deadline)) == 10

    def test_ensure_topic_is_idempotent(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic)
        broker.ensure_topic(topic)
        broker.ensure_topic(topic, group)
        broker.ensure_topic(topic, group)
        self._publish_ok(broker, _messages(topic, 3))
        broker.ensure_topic(topic, group)  # must not reset the group or drop messages
        consumer = subscribe(topic, group, "m")
        received = receive_until([consumer], 3, self._deadline(self.receive_deadline))
        assert sorted(d.headers["seq"] for _, d in received) == ["0", "1", "2"]

    def test_acknowledged_messages_are_not_delivered_again(
        self,
        broker: Broker,
        subscribe: Callable[..., Subscription],
        unique: str,
    ) -> None:
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic, group)
        self._publish_ok(broker, _messages(topic, 4))
        first = subscribe(topic, group, "m")
        assert len(receive_until([first], 4, self._deadline(self.receive_deadline))) == 4
        first.close()
        # A restart with the same stable name gets nothing: acknowledged means done
        again = subscribe(topic, group, "m")
        assert receive_until([again], 1, self._deadline(min(2.0, self.receive_deadline))) == []

    def test_ack_many_acknowledges_a_whole_batch(
        self,
        broker: Broker,
        subscribe: Callable[..., Subscription],
        unique: str,
    ) -> None:
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic, group)
        self._publish_ok(broker, _messages(topic, 6, keys=2))
        first = subscribe(topic, group, "m")
        got = receive_until([first], 6, self._deadline(self.receive_deadline), ack=False)
        assert len(got) == 6
        first.ack_many([delivery for _, delivery in got])
        first.close()
        # A restart with the same stable name gets nothing: the batch was acknowledged
        again = subscribe(topic, group, "m")
        assert receive_until([again], 1, self._deadline(min(2.0, self.receive_deadline))) == []

    def test_ack_many_of_nothing_is_a_no_op(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic, group)
        subscription = subscribe(topic, group, "m")
        subscription.ack_many([])
        self._publish_ok(broker, _messages(topic, 1))
        assert len(receive_until([subscription], 1, self._deadline(self.receive_deadline))) == 1
