"""Broker URLs of the CLI and the demo."""

from __future__ import annotations

import pytest

from outboxkit.brokers.memory import MemoryBroker
from outboxkit.brokers.redis_streams import RedisStreamsBroker
from outboxkit.errors import ConfigurationError
from outboxkit.urls import broker_from_url


def test_memory_and_redis_urls_give_their_brokers(redis_url: str) -> None:
    with broker_from_url("memory://") as memory, broker_from_url(redis_url) as redis_broker:
        assert isinstance(memory, MemoryBroker)
        assert isinstance(redis_broker, RedisStreamsBroker)


@pytest.mark.parametrize("url", ["amqp://127.0.0.1:5672", "kafka://", "127.0.0.1:9092"])
def test_unknown_or_incomplete_broker_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        broker_from_url(url)
