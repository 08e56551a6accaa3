"""The broker conformance suite: one set of tests every :class:`~outboxkit.broker.Broker` runs.

Subclass :class:`BrokerContract` in a test module (its name does not start with ``Test``, so
pytest only collects your subclass) and provide three fixtures::

    class TestMyBroker(BrokerContract):
        redelivery_timeout = 20.0          # capability flags and deadlines: class attributes

        @pytest.fixture
        def broker(self) -> Iterator[Broker]: ...          # connected; you close it

        @pytest.fixture
        def make_broker(self) -> Callable[[], Broker]: ... # NEW independent instance to the
                                                           # same server; the suite closes it

        @pytest.fixture
        def unreachable_broker(self) -> Iterator[Broker]: ...  # points at a closed port

A broker that can refuse a message for good overrides :meth:`BrokerContract.refused_message`
to build one (one over its size limit, say); one that cannot sets
``refuses_messages_for_good = False``.

``unique`` (a short unique suffix, from the project's ``conftest.py``) must also be available;
every topic and group name of the suite contains it, so a backend's teardown can delete what
a test created by matching it (e.g. Redis ``SCAN MATCH *<unique>*``).

The suite asserts behaviour on a real server, never on a stand-in. Capability flags change
what is asserted; a missing capability skips with a reason, a missing service never does.
Deadlines are class attributes because brokers differ in speed (a Kafka group join takes
seconds, a Redis ``XREADGROUP`` microseconds): raise them, never lower the bar.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import pytest

from outboxkit.broker import Broker, BrokerMessage, Delivery, Subscription
from outboxkit.errors import (
    BrokerClosedError,
    BrokerUnavailableError,
    MessageRejectedError,
    PermanentRejectionError,
)

__all__ = ["BrokerContract", "receive_until"]

#: Receive slice used when polling several subscriptions in turn.
_POLL_SLICE = 0.2


def receive_until(
    subscriptions: Sequence[Subscription],
    count: int,
    deadline: float,
    *,
    ack: bool = True,
    max_messages: int = 10,
) -> list[tuple[int, Delivery]]:
    """Poll ``subscriptions`` in turn until ``count`` deliveries arrived or ``deadline`` passed.

    ``deadline`` is a :func:`time.monotonic` instant. Returns ``(index of the subscription,
    delivery)`` pairs in arrival order; acknowledges each delivery when ``ack``. Small
    ``max_messages`` per receive lets several members of a group each get a share.
    """
    received: list[tuple[int, Delivery]] = []
    while len(received) < count and time.monotonic() < deadline:
        for index, subscription in enumerate(subscriptions):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch = subscription.receive(timeout=min(_POLL_SLICE, left), max_messages=max_messages)
            for delivery in batch:
                received.append((index, delivery))
                if ack:
                    subscription.ack(delivery)
    return received


def _messages(topic: str, count: int, *, keys: int | None = None) -> list[BrokerMessage]:
    """``count`` messages with non-ASCII keys and headers; distinct keys unless ``keys``."""
    return [
        BrokerMessage(
            topic=topic,
            key=f"clé-ключ-{i if keys is None else i % keys}",
            value=f"payload {i} ünïcødé ✓".encode(),
            headers={"seq": str(i), "trace-id": f"t-{i}", "note": "héllo wörld ✓"},
        )
        for i in range(count)
    ]


class BrokerContract:
    """The universal broker test suite; subclass it with ``broker`` fixtures (see module doc)."""

    # ------------------------------------------------------------------ capability flags
    #: Whether ``unreachable_broker`` can be built (False for in-process brokers).
    can_be_unreachable: bool = True
    #: Whether ``Delivery.delivery_count`` grows on redelivery (else it is always 1).
    supports_delivery_count: bool = True
    #: Whether an unacknowledged delivery held by a member that neither acks nor closes (a
    #: hung or crashed process) is handed to another member after an idle time (Redis
    #: ``XAUTOCLAIM``). Kafka keeps it with the member while its heartbeat lives.
    reclaims_idle_deliveries: bool = False
    #: Whether two live members of a group each get a share of the work (Kafka: needs at
    #: least two partitions and distinct keys).
    splits_work_between_members: bool = True
    #: Whether some message is refused for good (a
    #: :class:`~outboxkit.errors.PermanentRejectionError`), built by
    #: :meth:`refused_message` (False for a broker that takes anything, such as the
    #: in-process one).
    refuses_messages_for_good: bool = True

    # ------------------------------------------------------------------ deadlines (seconds)
    #: Time to receive messages that are already on the broker (includes a group join).
    receive_deadline: float = 10.0
    #: Time both members of a new group are polled before publishing, so a group that
    #: assigns work on join (Kafka) has both members in it. 0 for brokers without joins.
    group_settle_seconds: float = 0.0
    #: Time until an unacknowledged delivery of a closed (or idle, see
    #: ``reclaims_idle_deliveries``) member reaches another member.
    redelivery_timeout: float = 10.0
    #: Time a ``receive(timeout=30)`` may take to return after ``close()`` from another thread.
    close_unblock_seconds: float = 5.0
    #: Time an unreachable broker may take to report :class:`BrokerUnavailableError`.
    unavailable_deadline: float = 15.0
    #: Messages per volume test.
    message_count: int = 50

    # ------------------------------------------------------------------ helper fixtures
    @pytest.fixture
    def subscribe(self, broker: Broker) -> Iterator[Callable[..., Subscription]]:
        """``subscribe(topic, group, name, on=broker)``: a subscription closed after the test."""
        opened: list[Subscription] = []

        def open_(topic: str, group: str, name: str, on: Broker | None = None) -> Subscription:
            subscription = (on or broker).subscribe(topic, group, name)
            opened.append(subscription)
            return subscription

        yield open_
        for subscription in opened:
            subscription.close()

    @pytest.fixture
    def other_broker(self, make_broker: Callable[[], Broker]) -> Iterator[Callable[[], Broker]]:
        """A factory of independent brokers to the same server, closed after the test."""
        created: list[Broker] = []

        def new() -> Broker:
            instance = make_broker()
            created.append(instance)
            return instance

        yield new
        for instance in created:
            instance.close()

    def refused_message(self, broker: Broker, topic: str, key: str) -> BrokerMessage:
        """A message for ``topic`` and ``key`` that ``broker`` refuses for good (e.g. one
        over its size limit). Override it, or set ``refuses_messages_for_good = False``."""
        raise NotImplementedError(
            f"{type(self).__name__} must override refused_message "
            "(or set refuses_messages_for_good = False)"
        )

    def topic_name(self, unique: str, suffix: str = "t") -> str:
        """A topic name valid for Kafka and Redis that contains ``unique``."""
        return f"contract.{unique}.{suffix}"

    def _publish_ok(self, broker: Broker, messages: Sequence[BrokerMessage]) -> None:
        results = broker.publish(messages)
        assert len(results) == len(messages)
        assert [r.message for r in results] == list(messages)
        failed = [r.error for r in results if not r.ok]
        assert failed == [], f"publish failed: {failed[:3]}"

    def _deadline(self, seconds: float) -> float:
        return time.monotonic() + seconds

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
        settle = self._deadline(self.group_settle_seconds)
        while time.monotonic() < settle:
            assert first.receive(timeout=_POLL_SLICE) == []
            assert second.receive(timeout=_POLL_SLICE) == []
        # When N messages with distinct keys are published and both members ack
        messages = _messages(topic, self.message_count)
        self._publish_ok(broker, messages)
        received = receive_until(
            [first, second],
            len(messages),
            self._deadline(self.receive_deadline + self.group_settle_seconds),
            max_messages=5,
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

    # ------------------------------------------------------------------ closing
    def test_close_from_another_thread_unblocks_a_receive(
        self, broker: Broker, subscribe: Callable[..., Subscription], unique: str
    ) -> None:
        topic = self.topic_name(unique)
        broker.ensure_topic(topic)
        consumer = subscribe(topic, f"g.{unique}", "m")
        closer = threading.Timer(0.5, consumer.close)
        closer.start()
        try:
            started = time.monotonic()
            assert consumer.receive(timeout=30) == []
            elapsed = time.monotonic() - started
        finally:
            closer.join()
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
    def test_ping_answers_while_the_broker_is_reachable(self, broker: Broker) -> None:
        broker.ping()  # health checks call it: it must not raise, and must change nothing

    def test_ping_after_close_raises_broker_closed(
        self, other_broker: Callable[[], Broker]
    ) -> None:
        instance = other_broker()
        instance.ping()
        instance.close()
        with pytest.raises(BrokerClosedError):
            instance.ping()

    def test_ping_of_an_unreachable_broker_raises_unavailable_in_time(
        self, request: pytest.FixtureRequest
    ) -> None:
        if not self.can_be_unreachable:
            pytest.skip("an in-process broker cannot be unreachable")
        down: Broker = request.getfixturevalue("unreachable_broker")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            down.ping()
        elapsed = time.monotonic() - started
        assert elapsed < self.unavailable_deadline, f"took {elapsed:.1f} s"

    # ------------------------------------------------------------------ outages
    def test_publish_to_an_unreachable_broker_reports_unavailable(
        self, request: pytest.FixtureRequest, unique: str
    ) -> None:
        if not self.can_be_unreachable:
            pytest.skip("an in-process broker cannot be unreachable")
        down: Broker = request.getfixturevalue("unreachable_broker")
        topic = self.topic_name(unique)
        messages = _messages(topic, 3, keys=2)
        started = time.monotonic()
        try:
            results = down.publish(messages)
        except BrokerUnavailableError:
            pass
        else:
            assert [r.message for r in results] == messages
            assert all(isinstance(r.error, BrokerUnavailableError) for r in results), results
        elapsed = time.monotonic() - started
        assert elapsed < self.unavailable_deadline, f"took {elapsed:.1f} s"

    def test_receive_from_an_unreachable_broker_raises_unavailable(
        self, request: pytest.FixtureRequest, unique: str
    ) -> None:
        if not self.can_be_unreachable:
            pytest.skip("an in-process broker cannot be unreachable")
        down: Broker = request.getfixturevalue("unreachable_broker")
        topic = self.topic_name(unique)
        started = time.monotonic()
        subscription: Subscription | None = None
        try:
            with pytest.raises(BrokerUnavailableError):
                subscription = down.subscribe(topic, f"g.{unique}", "m")
                subscription.receive(timeout=1.0)
        finally:
            if subscription is not None:
                subscription.close()
        elapsed = time.monotonic() - started
        assert elapsed < self.unavailable_deadline, f"took {elapsed:.1f} s"
