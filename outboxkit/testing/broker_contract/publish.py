"""Publishing: what is published arrives intact, one result per message in order, a
message refused for good holds back only its key, and each key keeps its order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from outboxkit.broker import Broker, BrokerMessage, Subscription
from outboxkit.errors import MessageRejectedError, PermanentRejectionError
from outboxkit.testing.broker_contract.base import BrokerContractBase, _messages, receive_until


class BrokerPublishContract(BrokerContractBase):
    """``publish``, checked through a subscription. Needs ``broker`` (and ``unique``), and
    :meth:`~outboxkit.testing.broker_contract.base.BrokerContractBase.refused_message` unless
    ``refuses_messages_for_good`` is false."""

    # ------------------------------------------------------------------ publish and receive
    def test_published_messages_arrive_with_key_value_and_headers_intact(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        messages = _messages(topic, self.message_count)
        messages.append(
            BrokerMessage(topic=topic, key="binary", value=bytes(range(256)), headers={})
        )
        messages.append(BrokerMessage(topic=topic, key="empty", value=b"", headers={"a": ""}))

        self._publish_ok(broker, messages)
        consumer = subscribe(topic, f"g.{unique}", "member-1")
        received = receive_until(
            [consumer], len(messages), self._deadline(self.receive_deadline), max_messages=100
        )

        got = sorted(((d.key, d.value, dict(d.headers)) for _, d in received), key=repr)
        sent = sorted(((m.key, m.value, dict(m.headers)) for m in messages), key=repr)
        assert got == sent
        for _, delivery in received:
            assert delivery.topic == topic
            assert delivery.delivery_count >= 1
        assert consumer.receive(timeout=0.3) == []  # everything was acknowledged

    def test_publish_returns_one_ok_result_per_message_in_order(
        self, broker: Broker, unique: str
    ) -> None:
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        messages = _messages(topic, 5, keys=2)
        results = broker.publish(messages)
        assert [r.message for r in results] == messages
        assert all(r.ok and r.error is None for r in results)
        assert broker.publish([]) == []

    def test_a_message_refused_for_good_is_a_permanent_rejection_holding_back_only_its_key(
        self, broker: Broker, unique: str
    ) -> None:
        if not self.refuses_messages_for_good:
            pytest.skip("this broker refuses no message for good")
        # Given a batch where key "a"'s second message can never be accepted
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        messages = [
            BrokerMessage(topic=topic, key="a", value=b"a1"),
            self.refused_message(broker, topic, "a"),
            BrokerMessage(topic=topic, key="b", value=b"b1"),
            BrokerMessage(topic=topic, key="a", value=b"a3"),
        ]
        # When it is published
        results = broker.publish(messages)
        # Then that message is refused for good (the relay marks it dead at once)
        assert [r.ok for r in results] == [True, False, True, False], [r.error for r in results]
        assert isinstance(results[1].error, PermanentRejectionError), results[1].error
        # And the later message of its key was held back, with nothing wrong with it: a
        # counted retry, never a permanent refusal of its own
        assert isinstance(results[3].error, MessageRejectedError), results[3].error
        assert not isinstance(results[3].error, PermanentRejectionError)

    def test_per_key_order_is_preserved(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        # Given 3 keys x 20 messages, interleaved, sent in several batches
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        messages = _messages(topic, 60, keys=3)
        for start in range(0, 60, 15):
            self._publish_ok(broker, messages[start : start + 15])
        # When one member receives them
        consumer = subscribe(topic, f"g.{unique}", "m")
        received = receive_until([consumer], 60, self._deadline(self.receive_deadline))
        # Then each key's messages come in publish order
        per_key: dict[str, list[int]] = {}
        for _, delivery in received:
            per_key.setdefault(delivery.key, []).append(int(delivery.headers["seq"]))
        assert len(per_key) == 3
        for key, seqs in per_key.items():
            assert seqs == sorted(seqs), f"key {key} out of order: {seqs}"
            assert len(seqs) == 20
