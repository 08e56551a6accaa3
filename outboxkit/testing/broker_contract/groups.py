"""Consumer groups and redelivery: members of a group split the work, every group gets
everything, and an unacknowledged delivery reaches another member when its holder closes
(or, where the broker reclaims idle deliveries, hangs)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from outboxkit.broker import Broker, Subscription
from outboxkit.testing.broker_contract.base import (
    _POLL_SLICE,
    BrokerContractBase,
    _messages,
    receive_until,
)


class BrokerGroupContract(BrokerContractBase):
    """Groups of members in separate broker instances. Needs ``broker`` and ``make_broker``
    (and ``unique``)."""

    # ------------------------------------------------------------------ groups
    def test_two_members_of_a_group_split_the_work(
        self,
        broker: Broker,
        other_broker: Callable[[], Broker],
        subscribe: Callable[..., Subscription],
        unique: str,
    ) -> None:
        # Given two members of one group, each in its own broker instance (two processes)
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic, group)
        first = subscribe(topic, group, "member-1")
        second = subscribe(topic, group, "member-2", on=other_broker())
        # ... both in the group with their shares of the work (polled until it settles)
        settle = self._deadline(self.group_settle_seconds)
        while not self.group_settled([first, second]):
            assert time.monotonic() < settle, (
                f"the group did not settle in {self.group_settle_seconds:g} s"
            )
            assert first.receive(timeout=_POLL_SLICE) == []
            assert second.receive(timeout=_POLL_SLICE) == []
        # When N messages with distinct keys are published and both members ack
        messages = _messages(topic, self.message_count)
        self._publish_ok(broker, messages)
        received = receive_until(
            [first, second], len(messages), self._deadline(self.receive_deadline), max_messages=5
        )
        # Then together they saw every message exactly once
        seqs = Counter(d.headers["seq"] for _, d in received)
        assert sorted(seqs) == sorted(m.headers["seq"] for m in messages)
        assert max(seqs.values()) == 1, f"duplicates: {[s for s, n in seqs.items() if n > 1]}"
        if self.splits_work_between_members:
            per_member = Counter(index for index, _ in received)
            assert per_member[0] > 0 and per_member[1] > 0, f"one member idle: {per_member}"

    def test_two_groups_each_receive_everything(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        self._publish_ok(broker, _messages(topic, self.message_count))
        billing = subscribe(topic, f"billing.{unique}", "m")
        audit = subscribe(topic, f"audit.{unique}", "m")
        deadline = self._deadline(self.receive_deadline)
        for consumer in (billing, audit):
            received = receive_until([consumer], self.message_count, deadline)
            assert sorted(int(d.headers["seq"]) for _, d in received) == list(
                range(self.message_count)
            )

    def test_an_unacknowledged_delivery_goes_to_another_member_after_the_first_closes(
        self,
        broker: Broker,
        other_broker: Callable[[], Broker],
        subscribe: Callable[..., Subscription],
        unique: str,
    ) -> None:
        # Given a member that received messages but acknowledged none of them
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic, group)
        self._publish_ok(broker, _messages(topic, 5))
        dying = subscribe(topic, group, "member-1", on=other_broker())
        taken = receive_until([dying], 5, self._deadline(self.receive_deadline), ack=False)
        assert len(taken) == 5
        # When it closes (its process dies) and another member of the group reads
        dying.close()
        survivor = subscribe(topic, group, "member-2")
        received = receive_until([survivor], 5, self._deadline(self.redelivery_timeout))
        # Then every message comes again, counted as a redelivery
        assert sorted(d.headers["seq"] for _, d in received) == ["0", "1", "2", "3", "4"]
        if self.supports_delivery_count:
            assert all(d.delivery_count >= 2 for _, d in received), [
                d.delivery_count for _, d in received
            ]

    def test_an_idle_unacknowledged_delivery_is_claimed_by_another_member(
        self,
        broker: Broker,
        other_broker: Callable[[], Broker],
        subscribe: Callable[..., Subscription],
        unique: str,
    ) -> None:
        if not self.reclaims_idle_deliveries:
            pytest.skip("this broker keeps deliveries with a live member (no idle claim)")
        # Given a member that took messages and hangs: it never acks and never closes
        topic = self.topic_name(unique)
        group = f"g.{unique}"
        broker.ensure_topic(topic, group)
        self._publish_ok(broker, _messages(topic, 3))
        hung = subscribe(topic, group, "hung", on=other_broker())
        assert len(receive_until([hung], 3, self._deadline(self.receive_deadline), ack=False)) == 3
        # When another member keeps reading
        survivor = subscribe(topic, group, "survivor")
        received = receive_until([survivor], 3, self._deadline(self.redelivery_timeout))
        # Then it gets the idle messages
        assert sorted(d.headers["seq"] for _, d in received) == ["0", "1", "2"]
        if self.supports_delivery_count:
            assert all(d.delivery_count >= 2 for _, d in received)
