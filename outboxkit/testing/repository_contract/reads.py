"""The :class:`~outboxkit.store.RowReads` part of the repository suite: one row read by id
or by event id. The consumer and operators both read rows, so
:class:`~outboxkit.testing.repository_contract.consume.ConsumeStoreContract` and
:class:`~outboxkit.testing.repository_contract.admin.AdminStoreContract` include it."""

from __future__ import annotations

from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route
from outboxkit.store import Repository
from outboxkit.testing.repository_contract.base import RepositoryContractBase, _request
from outboxkit.wire.envelope import decode_shell


class RowReadsContract(RepositoryContractBase):
    """Behaviour of :class:`~outboxkit.store.RowReads`: ``get`` and ``get_by_event_id``.

    Beyond its role it calls ``create_schema`` (fixtures), ``transaction`` and ``add``
    (the row, through the ``publisher``).
    """

    def test_get_by_event_id(
        self, repository: Repository, publisher: Publisher, route: Route
    ) -> None:
        event_id = publisher.publish(_request(payload=[1, 2]))
        row = repository.get_by_event_id(route, event_id)
        assert row is not None
        assert decode_shell(row.payload).payload == [1, 2]
        assert repository.get_by_event_id(route, "no-such-event") is None
        assert repository.get(route, 987654321) is None
