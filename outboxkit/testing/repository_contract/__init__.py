"""The repository conformance suite; split into one module per storage role next."""

from outboxkit.testing.repository_contract.relay import RepositoryContract

__all__ = ["RepositoryContract"]
