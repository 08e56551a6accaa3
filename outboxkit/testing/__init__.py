"""Conformance suites and test helpers, shipped so your own backend can prove itself.

They need pytest (``pip install "outboxkit[test]"``); the rest of the package does not.

* ``repository_contract.RepositoryContract``: subclass it, provide an ``engine`` fixture (and
  a ``repository`` fixture for your own store). One mixin per storage role
  (``OutboxWriterContract``, ``RelayStoreContract``, ...) for a store with only some roles.
* ``broker_contract.BrokerContract``: subclass it, provide a ``broker`` fixture (and
  ``make_broker``, ``unreachable_broker``). One mixin per concern (publish, receive, groups,
  lifecycle, outages).
* ``services``: reach the databases and brokers a test run needs, failing loudly (never
  skipping) with the service's name and address when one is down.
"""
