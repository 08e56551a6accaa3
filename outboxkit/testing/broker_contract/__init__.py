"""The broker conformance suite; split into one module per concern next."""

from outboxkit.testing.broker_contract.base import BrokerContract, receive_until

__all__ = ["BrokerContract", "receive_until"]
