"""Construction of kafka-python clients, with their failures translated to our errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from outboxkit.errors import BrokerUnavailableError, ConfigurationError


def new_client(factory: Any, settings: Mapping[str, Any], what: str, servers: str) -> Any:
    """Build a kafka-python client; bad settings and unreachable brokers become ours."""
    from kafka.errors import KafkaConfigurationError

    try:
        return factory(**settings)
    except KafkaConfigurationError as exc:
        raise ConfigurationError(f"invalid Kafka {what} settings: {exc}") from exc
    except Exception as exc:
        raise BrokerUnavailableError(
            f"cannot connect a Kafka {what} to {servers}: {type(exc).__name__}: {exc}"
        ) from exc
