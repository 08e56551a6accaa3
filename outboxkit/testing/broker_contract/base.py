"""What every part of the broker suite shares: capability flags, deadlines, helper
fixtures and :func:`receive_until`.

:class:`BrokerContractBase` is the root of every mixin of
:mod:`outboxkit.testing.broker_contract` and collects no test of its own. ``_messages`` and
``_POLL_SLICE`` are the suite's helpers; the other modules import them from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from outboxkit.broker import Broker, BrokerMessage, Delivery, Subscription

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


class BrokerContractBase:
    """The capability flags, deadlines and helpers of every part of the suite (see the
    package doc for the fixtures a subclass provides)."""

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
    #: Longest time both members of a new group are polled, before publishing, for the
    #: group to settle (:meth:`group_settled`); the test fails if it has not by then. A
    #: deadline, not a wait: a group that settles at once costs nothing.
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

    def group_settled(self, members: Sequence[Subscription]) -> bool:
        """Whether the ``members`` of one group are all in it, each with its share of the
        work, so that a message published now goes to exactly one of them and no rebalance
        is pending. A broker that assigns work on join (Kafka) overrides it to look at its
        members' assignments; the default, for brokers without joins, is ``True``."""
        return True

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
