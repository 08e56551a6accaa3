"""The conformance suite of the storage roles (:mod:`outboxkit.store`), on a real database.

The suite is split the way the store is: one mixin per role, each in a module of its own, so
a backend can prove the roles it implements and each part reads alone.

* :class:`OutboxWriterContract` (``writer``): publishing in the caller's transaction.
* :class:`RelayStoreContract` (``relay``): claims, leases, the guarded ``mark_published``,
  ``release``, ``republish_stale``.
* :class:`ConsumeStoreContract` (``consume``): ``consume``, ``consume_batch``,
  ``mark_consumed``.
* :class:`AdminStoreContract` (``admin``): counts, listings, requeues, deletions, the
  housekeeping lock, the database's clock.
* :class:`SchemaStoreContract` (``schema``): ``create_schema``, ``table_for``, ``has_table``.
* :class:`FailureMarksContract` (``failures``: ``schedule_retry``, ``mark_dead``) and
  :class:`RowReadsContract` (``reads``: ``get``, ``get_by_event_id``): the parts two roles
  share. As in the roles, the relay and consume mixins include the first, the consume and
  admin mixins the second.

Every mixin is a :class:`RepositoryContractBase` (``base``: fixtures, helpers, capability
flags). :class:`RepositoryContract` is all of them, for a whole
:class:`~outboxkit.store.Repository`.

A whole repository: subclass :class:`RepositoryContract` in a test module (name the subclass
``Test...``) and provide an ``engine`` fixture; the default ``repository`` fixture wraps it in
a :class:`~outboxkit.backends.sql.SqlRepository`, override it to test your own implementation
(it must write to tables the ``engine`` can read)::

    class TestMyRepository(RepositoryContract):
        @pytest.fixture
        def engine(self, postgres_engine):
            return postgres_engine

A store that implements only some roles: subclass the mixins of those roles instead (they
bring :class:`RepositoryContractBase`; list it last, if at all) and provide the same
fixtures. A mixin calls its role's methods on ``repository``, and methods of other roles to
prepare and inspect rows: ``create_schema`` (the ``route`` and ``routes`` fixtures),
``transaction`` and ``add`` (the ``add`` helper and the ``publisher`` fixture), ``get``, and
where a test specifies how two roles meet (a late ``mark_published`` after a consumer's
``mark_consumed``) the other role's method; each mixin's docstring lists them. So
``repository`` must answer every :class:`~outboxkit.store.Repository` method: give it your
store's methods for its roles and the reference ``SqlRepository``'s, on the same ``engine``,
for the rest::

    class RelayUnderTest:  # MyRelayStore for the relay role, the reference for the rest
        def __init__(self, relay: MyRelayStore, reference: SqlRepository) -> None:
            self.relay, self.reference = relay, reference

        def __getattr__(self, name: str) -> Any:
            return getattr(self.relay if hasattr(RelayStore, name) else self.reference, name)


    class TestMyRelayStore(RelayStoreContract):
        @pytest.fixture
        def engine(self, postgres_engine):
            return postgres_engine

        @pytest.fixture
        def repository(self, engine):
            reference = SqlRepository(engine)
            yield RelayUnderTest(MyRelayStore(engine), reference)
            reference.close()

Capability flags (class attributes of the subclass) change what is asserted, never whether a
test runs:

* ``supports_concurrent_claims``: two claimers can hold claims at once and a locked row is
  skipped (``FOR UPDATE SKIP LOCKED``). When false (SQLite), the suite asserts the weaker
  property instead: a claim waits for the other writer, and claims are still disjoint; and a
  second holder gets the housekeeping lock too (SQLite has no such lock, it always grants it).
* ``ddl_beside_open_writers``: another connection can run DDL while a caller's write
  transaction is open. When false (SQLite: every transaction holds the single write lock),
  ``create_schema`` is checked without a caller's transaction open beside it.

One test needs row locks and skips on SQLite, which has none: ``consume_batch``'s lock order.

Every test makes its own tables (unique names) and drops them afterwards.
"""

from __future__ import annotations

from outboxkit.testing.repository_contract.admin import AdminStoreContract
from outboxkit.testing.repository_contract.base import (
    JOIN_TIMEOUT,
    SLACK,
    TYPE_A,
    TYPE_B,
    RepositoryContractBase,
)
from outboxkit.testing.repository_contract.consume import ConsumeStoreContract
from outboxkit.testing.repository_contract.failures import FailureMarksContract
from outboxkit.testing.repository_contract.reads import RowReadsContract
from outboxkit.testing.repository_contract.relay import RelayStoreContract
from outboxkit.testing.repository_contract.schema import SchemaStoreContract
from outboxkit.testing.repository_contract.writer import OutboxWriterContract

__all__ = [
    "RepositoryContract",
    "RepositoryContractBase",
    "OutboxWriterContract",
    "RelayStoreContract",
    "ConsumeStoreContract",
    "AdminStoreContract",
    "SchemaStoreContract",
    "FailureMarksContract",
    "RowReadsContract",
    "TYPE_A",
    "TYPE_B",
    "SLACK",
    "JOIN_TIMEOUT",
]


class RepositoryContract(
    OutboxWriterContract,
    RelayStoreContract,
    ConsumeStoreContract,
    AdminStoreContract,
    SchemaStoreContract,
):
    """Behaviour every :class:`~outboxkit.store.Repository` must show: every role's mixin.

    Needs an ``engine`` fixture (a SQLAlchemy engine on the database under test).
    """
