"""The :class:`~outboxkit.store.FailureMarks` part of the repository suite: failed attempts
counted and scheduled on the database's clock, ``dead`` at ``max_retry``, reasons truncated,
final rows never overwritten. The relay and the consumer both record failures, so
:class:`~outboxkit.testing.repository_contract.relay.RelayStoreContract` and
:class:`~outboxkit.testing.repository_contract.consume.ConsumeStoreContract` include it."""

from __future__ import annotations

import uuid
from datetime import timedelta

from outboxkit.messages import Outcome, Status
from outboxkit.routing import Route
from outboxkit.store import MAX_LAST_ERROR, Repository, truncate_error
from outboxkit.testing.repository_contract.base import SLACK, RepositoryContractBase


class FailureMarksContract(RepositoryContractBase):
    """Behaviour of :class:`~outboxkit.store.FailureMarks`: ``schedule_retry`` (with a
    relay's lease token and without, as a consumer calls it) and ``mark_dead``.

    Beyond its role it calls ``create_schema`` (fixtures), ``transaction`` and
    ``add`` (rows), ``get``, ``now``, ``claim_due`` and ``mark_published`` (a relay's lease, a
    published row) and ``mark_consumed`` (a final row).
    """

    def test_final_states_are_never_overwritten(self, repository: Repository, route: Route) -> None:
        consumed, dead = self.add(repository, route, 2)
        assert repository.mark_consumed(route, consumed)
        assert repository.mark_dead(route, dead, reason="first reason")
        assert not repository.mark_dead(route, consumed, reason="late")
        assert not repository.mark_consumed(route, dead)
        assert not repository.mark_dead(route, dead, reason="second reason")
        assert not repository.mark_consumed(route, consumed)
        assert not repository.mark_consumed(route, 987654321)
        for outbox_id in (consumed, dead):
            outcome = repository.schedule_retry(
                route, outbox_id, reason="late", backoff=lambda _n: 1.0
            )
            assert outcome is Outcome.SKIPPED
        row_c, row_d = repository.get(route, consumed), repository.get(route, dead)
        assert row_c is not None and row_d is not None
        assert row_c.status is Status.CONSUMED
        assert row_c.consumed_at is not None
        assert row_d.status is Status.DEAD
        assert row_d.last_error == "first reason"
        assert row_d.next_retry_at is None

    def test_schedule_retry_counts_and_uses_the_database_clock(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 2)
        claim = self.claim_all(repository, route)
        repository.mark_published(route, [ids[1]], token=claim.token)
        seen: list[int] = []

        def backoff(n: int) -> float:
            seen.append(n)
            return 120.0

        # a relay's retry needs its lease
        wrong = repository.schedule_retry(
            route, ids[0], reason="x", backoff=backoff, token=str(uuid.uuid4())
        )
        assert wrong is Outcome.SKIPPED
        outcome = repository.schedule_retry(
            route, ids[0], reason="broker said no", backoff=backoff, token=claim.token
        )
        assert outcome is Outcome.RETRY
        # a consumer's retry works on a published row, without a token
        outcome = repository.schedule_retry(route, ids[1], reason="handler", backoff=backoff)
        assert outcome is Outcome.RETRY
        assert seen == [1, 1]
        now = repository.now()
        for outbox_id, reason in ((ids[0], "broker said no"), (ids[1], "handler")):
            row = repository.get(route, outbox_id)
            assert row is not None
            assert row.status is Status.PENDING
            assert row.retry_count == 1
            assert row.last_error == reason
            assert row.lease_token is None
            assert row.next_retry_at is not None
            expected = now + timedelta(seconds=120)
            assert expected - SLACK <= row.next_retry_at <= expected + SLACK
        assert self.claim_all(repository, route).messages == []
        assert (
            repository.schedule_retry(route, 987654321, reason="x", backoff=backoff)
            is Outcome.SKIPPED
        )

    def test_schedule_retry_goes_dead_at_max_retry(
        self, repository: Repository, route: Route
    ) -> None:
        [outbox_id] = self.add(repository, route, max_retry=3)
        outcomes = [
            repository.schedule_retry(route, outbox_id, reason=f"try {i}", backoff=lambda _n: 0)
            for i in range(4)
        ]
        assert outcomes == [
            Outcome.RETRY,
            Outcome.RETRY,
            Outcome.DEAD,
            Outcome.SKIPPED,
        ]
        row = repository.get(route, outbox_id)
        assert row is not None
        assert row.status is Status.DEAD
        assert row.retry_count == 3
        assert row.next_retry_at is None
        assert row.last_error == "try 2"

    def test_last_error_is_truncated_on_a_character_boundary(
        self, repository: Repository, route: Route
    ) -> None:
        reason = "消费失败😀" * 1000  # 5000 characters, 3- and 4-byte UTF-8
        ids = self.add(repository, route, 2)
        repository.schedule_retry(route, ids[0], reason=reason, backoff=lambda _n: 1.0)
        repository.mark_dead(route, ids[1], reason=reason)
        for outbox_id in ids:
            row = repository.get(route, outbox_id)
            assert row is not None
            assert row.last_error == truncate_error(reason)
            assert len(row.last_error) == MAX_LAST_ERROR
