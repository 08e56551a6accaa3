"""Outages: a broker that cannot reach its server says so with
:class:`~outboxkit.errors.BrokerUnavailableError`, in time, from ``ping``, ``publish`` and
``receive``."""

from __future__ import annotations

import time

import pytest

from outboxkit.broker import Broker, Subscription
from outboxkit.errors import BrokerUnavailableError
from outboxkit.testing.broker_contract.base import BrokerContractBase, _messages


class BrokerOutageContract(BrokerContractBase):
    """An unreachable broker. Needs ``unreachable_broker`` (and ``unique``) unless
    ``can_be_unreachable`` is false, when every test skips."""

    # ------------------------------------------------------------------ outages
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
