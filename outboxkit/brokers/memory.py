"""An in-process broker with consumer-group semantics, for the embedded demo and unit tests.

It is NOT a substitute for Kafka or Redis Streams: nothing survives the process, there is no
network to fail, and it is only as fast as a lock allows. What it does model faithfully is
the behaviour the engine depends on, so engine tests exercise the same paths:

* topics are append-only lists; each consumer group has a cursor starting at the beginning;
* every delivery is pending (with a delivery count) until acknowledged;
* an unacknowledged delivery of a closed subscription goes back to its group at once, and a
  delivery idle longer than ``redelivery_idle_seconds`` is handed to another member (like
  Redis ``XAUTOCLAIM``);
* per-key order holds within a topic: a message is never handed to one member while an
  earlier message of the same key is pending with another member.

Several :class:`MemoryBroker` instances may share one :class:`MemoryStore` (like several
processes connected to one server); closing a broker stops its subscriptions only.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import attrs

from outboxkit.broker import Broker, BrokerMessage, Delivery, SendResult, Subscription
from outboxkit.errors import BrokerClosedError, InvalidNameError

__all__ = ["MemoryBroker", "MemoryBrokerConfig", "MemoryStore"]

logger = logging.getLogger(__name__)

#: Idle time after which a pending delivery may be handed to another member (seconds).
DEFAULT_REDELIVERY_IDLE_SECONDS = 30.0


@attrs.frozen(kw_only=True)
class MemoryBrokerConfig:
    """Settings of a :class:`MemoryBroker`."""

    #: A delivery not acknowledged for this long is handed to another member of its group.
    redelivery_idle_seconds: float = attrs.field(
        default=DEFAULT_REDELIVERY_IDLE_SECONDS, validator=attrs.validators.gt(0)
    )


@attrs.frozen(kw_only=True)
class _Entry:
    key: str
    value: bytes
    headers: Mapping[str, str]


@attrs.define(kw_only=True)
class _Pending:
    owner: str
    delivery_count: int
    delivered_at: float


@attrs.define(kw_only=True)
class _Group:
    #: Every entry at or after this index has never been delivered to the group.
    next_index: int = 0
    #: Sorted indices below ``next_index`` that are waiting for (re)delivery.
    backlog: list[int] = attrs.field(factory=list)
    #: Entry index -> who holds it; insertion order is not relied upon.
    pending: dict[int, _Pending] = attrs.field(factory=dict)
    #: Delivery counts of entries returned to the backlog (kept across redelivery).
    counts: dict[int, int] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class _Topic:
    entries: list[_Entry] = attrs.field(factory=list)
    groups: dict[str, _Group] = attrs.field(factory=dict)


class MemoryStore:
    """The shared state of one in-process "server": topics, groups and a condition to wait on.

    Thread-safe; every access holds :attr:`condition`. Time comes from ``clock`` so tests of
    idle redelivery can be deterministic.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.condition = threading.Condition()
        self.clock = clock
        self._topics: dict[str, _Topic] = {}

    def topic(self, name: str) -> _Topic:
        """The topic ``name``, created if missing. Caller holds :attr:`condition`."""
        if not name:
            raise InvalidNameError("topic name must not be empty")
        found = self._topics.get(name)
        if found is None:
            found = self._topics[name] = _Topic()
        return found

    def group(self, topic: str, group: str) -> _Group:
        """The group, created at the beginning of the topic. Caller holds :attr:`condition`."""
        if not group:
            raise InvalidNameError("group name must not be empty")
        groups = self.topic(topic).groups
        found = groups.get(group)
        if found is None:
            found = groups[group] = _Group()
        return found


class MemoryBroker(Broker):
    """In-process :class:`~outboxkit.broker.Broker`; see the module docstring for its scope."""

    def __init__(
        self, config: MemoryBrokerConfig | None = None, *, store: MemoryStore | None = None
    ) -> None:
        self.config = config or MemoryBrokerConfig()
        self.store = store or MemoryStore()
        self._closed = False
        self._subscriptions: list[MemorySubscription] = []

    def connect(self) -> MemoryBroker:
        """Another broker on the same store, as a second process would connect to a server."""
        return MemoryBroker(self.config, store=self.store)

    def publish(self, messages: Sequence[BrokerMessage]) -> list[SendResult]:
        """Append every message to its topic; always ok (memory cannot fail)."""
        with self.store.condition:
            self._check_open()
            for message in messages:
                self.store.topic(message.topic).entries.append(
                    _Entry(key=message.key, value=message.value, headers=dict(message.headers))
                )
            if messages:
                self.store.condition.notify_all()
        return [SendResult(message=message) for message in messages]

    def subscribe(self, topic: str, group: str, consumer_name: str) -> MemorySubscription:
        if not consumer_name:
            raise InvalidNameError("consumer name must not be empty")
        with self.store.condition:
            self._check_open()
            self.store.group(topic, group)
            subscription = MemorySubscription(self, topic, group, consumer_name)
            self._subscriptions.append(subscription)
            return subscription

    def ensure_topic(self, topic: str, group: str | None = None) -> None:
        with self.store.condition:
            self._check_open()
            self.store.topic(topic)
            if group is not None:
                self.store.group(topic, group)

    def close(self) -> None:
        """Close every subscription of this broker (their deliveries go back to the groups)."""
        with self.store.condition:
            if self._closed:
                return
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.close()

    def ping(self) -> None:
        """In-process: reachable while open."""
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("memory broker is closed")


class MemorySubscription(Subscription):
    """One member of a group; holds no state of its own beyond its name (like Redis)."""

    def __init__(self, broker: MemoryBroker, topic: str, group: str, consumer_name: str) -> None:
        self._broker = broker
        self._store = broker.store
        self.topic = topic
        self.group = group
        self.consumer_name = consumer_name
        self._closed = False
        # Like a Redis consumer re-reading its own pending entries (ID 0) after a restart:
        # what a previous incarnation with this name left unacknowledged comes first.
        self._replay_own = True

    def receive(self, *, timeout: float, max_messages: int = 100) -> list[Delivery]:
        if max_messages <= 0:
            return []
        condition = self._store.condition
        deadline = self._store.clock() + max(timeout, 0.0)
        idle = self._broker.config.redelivery_idle_seconds
        with condition:
            while not self._closed:
                deliveries = self._take(max_messages)
                if deliveries:
                    return deliveries
                left = deadline - self._store.clock()
                if left <= 0:
                    break
                # Wake for new messages and closes via notify; the idle claim needs no
                # notification because the wait is capped at the idle time.
                condition.wait(min(left, idle))
        return []

    def ack(self, delivery: Delivery) -> None:
        with self._store.condition:
            if self._closed:
                raise BrokerClosedError(
                    f"subscription {self.consumer_name} to {self.topic} is closed"
                )
            group = self._store.group(self.topic, self.group)
            index = int(delivery.receipt)
            if group.pending.pop(index, None) is None:
                logger.debug("ack of %s#%d: no longer pending", self.topic, index)
            # The key may have been blocked for other members by this pending entry.
            self._store.condition.notify_all()

    def close(self) -> None:
        """Return this member's unacknowledged deliveries to the group and wake receivers."""
        with self._store.condition:
            if self._closed:
                return
            self._closed = True
            group = self._store.group(self.topic, self.group)
            for index, pending in list(group.pending.items()):
                if pending.owner == self.consumer_name:
                    del group.pending[index]
                    group.counts[index] = pending.delivery_count
                    bisect.insort(group.backlog, index)
            self._store.condition.notify_all()

    # ------------------------------------------------------------------ internals
    def _take(self, max_messages: int) -> list[Delivery]:
        """Hand out up to ``max_messages`` entries in topic order. Caller holds the lock."""
        topic = self._store.topic(self.topic)
        group = self._store.group(self.topic, self.group)
        now = self._store.clock()
        idle = self._broker.config.redelivery_idle_seconds
        me = self.consumer_name

        claimable: list[int] = []
        replay, self._replay_own = self._replay_own, False
        blocked: set[str] = set()
        for index, pending in group.pending.items():
            if pending.owner == me:
                if replay:
                    claimable.append(index)
                continue
            if now - pending.delivered_at >= idle:
                claimable.append(index)
            else:
                blocked.add(topic.entries[index].key)

        taken: list[Delivery] = []
        skipped: list[int] = []

        def offer(index: int) -> bool:
            entry = topic.entries[index]
            if entry.key in blocked:
                return False
            previous = group.pending.get(index)
            count = (
                previous.delivery_count if previous is not None else group.counts.pop(index, 0)
            ) + 1
            group.pending[index] = _Pending(owner=me, delivery_count=count, delivered_at=now)
            taken.append(
                Delivery(
                    topic=self.topic,
                    key=entry.key,
                    value=entry.value,
                    headers=dict(entry.headers),
                    receipt=index,
                    delivery_count=count,
                )
            )
            return True

        # Claimable and backlog entries all lie below next_index, so this is topic order.
        earlier = sorted(itertools.chain(claimable, group.backlog))
        kept: list[int] = []
        for index in earlier:
            in_backlog = index not in group.pending
            if len(taken) >= max_messages or not offer(index):
                # An entry left behind blocks later entries of its key for everyone here.
                blocked.add(topic.entries[index].key)
                if in_backlog:
                    kept.append(index)
        group.backlog = kept
        while group.next_index < len(topic.entries) and len(taken) < max_messages:
            index = group.next_index
            group.next_index += 1
            if not offer(index):
                blocked.add(topic.entries[index].key)
                skipped.append(index)
        for index in skipped:
            bisect.insort(group.backlog, index)
        return taken
