"""Conformance suites and test helpers, shipped so your own backend can prove itself.

They need pytest (``pip install "outboxkit[test]"``); the rest of the package does not.

* ``repository_contract.RepositoryContract``: subclass it, provide a ``repository`` fixture.
* ``broker_contract.BrokerContract``: subclass it, provide a ``broker`` fixture.
* ``services``: reach the databases and brokers a test run needs, failing loudly (never
  skipping) with the service's name and address when one is down.
"""
