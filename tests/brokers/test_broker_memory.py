"""The broker contract on the in-process MemoryBroker, plus what only it can show."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from outboxkit.broker import Broker, BrokerMessage
from outboxkit.brokers.memory import MemoryBroker, MemoryBrokerConfig, MemoryStore
from outboxkit.testing.broker_contract import BrokerContract, receive_until


class TestMemoryBroker(BrokerContract):
    can_be_unreachable = False
    reclaims_idle_deliveries = True
    refuses_messages_for_good = False  # it takes any message
    redelivery_timeout = 5.0

    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    @pytest.fixture
    def broker(self, store: MemoryStore) -> Iterator[Broker]:
        broker = MemoryBroker(MemoryBrokerConfig(redelivery_idle_seconds=1.0), store=store)
        yield broker
        broker.close()

    @pytest.fixture
    def make_broker(self, store: MemoryStore) -> Callable[[], Broker]:
        return lambda: MemoryBroker(MemoryBrokerConfig(redelivery_idle_seconds=1.0), store=store)


def test_a_key_pending_with_one_member_is_not_handed_to_another() -> None:
    # Given member A holds message 0 of key k (unacknowledged)
    broker = MemoryBroker(MemoryBrokerConfig(redelivery_idle_seconds=60))
    messages = [
        BrokerMessage(topic="t", key=k, value=str(i).encode())
        for i, k in enumerate(["k", "k", "other"])
    ]
    broker.publish(messages)
    a = broker.subscribe("t", "g", "a")
    b = broker.subscribe("t", "g", "b")
    first = a.receive(timeout=0.1, max_messages=1)
    assert [d.value for d in first] == [b"0"]
    # When B reads, it gets only the other key: message 1 of k waits for A
    assert [d.value for d in b.receive(timeout=0.1)] == [b"2"]
    # Then once A acks, message 1 of k is free for whoever reads next
    a.ack(first[0])
    assert [d.value for d in b.receive(timeout=0.1)] == [b"1"]
    broker.close()


def test_a_restarted_member_with_the_same_name_gets_its_pending_entries_first() -> None:
    broker = MemoryBroker(MemoryBrokerConfig(redelivery_idle_seconds=60))
    broker.publish([BrokerMessage(topic="t", key="k", value=b"x")])
    crashed = broker.subscribe("t", "g", "stable-name")
    assert len(crashed.receive(timeout=0.1)) == 1  # never acked, never closed
    restarted = broker.subscribe("t", "g", "stable-name")
    again = receive_until([restarted], 1, deadline=time.monotonic() + 1)
    assert [(d.value, d.delivery_count) for _, d in again] == [(b"x", 2)]
    broker.close()


def test_importing_the_brokers_package_needs_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['kafka'] = None\n"
        "import outboxkit.brokers; print(outboxkit.brokers.MemoryBroker.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "MemoryBroker"
