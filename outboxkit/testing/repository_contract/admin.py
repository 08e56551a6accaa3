"""The :class:`~outboxkit.store.AdminStore` part of the repository suite: what operators and
housekeeping read and repair (counts, ages, filtered pages, guarded requeues and deletions),
the housekeeping lock and the database's clock. Includes the row reads
(:class:`~outboxkit.testing.repository_contract.reads.RowReadsContract`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import sqlalchemy as sa

from outboxkit.messages import Status
from outboxkit.routing import Route
from outboxkit.store import Repository, RowFilter
from outboxkit.testing.repository_contract.base import SLACK, TYPE_A, TYPE_B
from outboxkit.testing.repository_contract.reads import RowReadsContract


class AdminStoreContract(RowReadsContract):
    """Behaviour of :class:`~outboxkit.store.AdminStore`, besides its row reads.

    Beyond its role it calls ``create_schema`` (fixtures), ``transaction`` and
    ``add`` (rows), and ``claim_due``, ``mark_published``, ``release``, ``schedule_retry``,
    ``mark_dead`` and ``mark_consumed`` to put rows in each status. The second holder of the
    housekeeping lock is a reference :class:`~outboxkit.backends.sql.SqlRepository` on the
    same ``engine``: a lock of your own must exclude it (unless ``supports_concurrent_claims``
    is false).
    """

    # ------------------------------------------------------------------ dead letters

    def test_requeue_dead(self, repository: Repository, route: Route) -> None:
        ids = self.add(repository, route, 3, max_retry=1)
        for outbox_id in ids[:2]:
            repository.schedule_retry(route, outbox_id, reason="gone", backoff=lambda _n: 1)
        assert [self.status(repository, route, i) for i in ids] == [
            Status.DEAD,
            Status.DEAD,
            Status.PENDING,
        ]
        assert repository.requeue_dead(route, [ids[0], ids[2]]) == 1
        assert repository.requeue_dead(route, []) == 0
        assert repository.requeue_dead(route) == 1
        assert repository.requeue_dead(route) == 0
        for outbox_id in ids:
            row = repository.get(route, outbox_id)
            assert row is not None
            assert row.status is Status.PENDING
            assert row.retry_count == 0
        assert sorted(m.id for m in self.claim_all(repository, route).messages) == ids

    def test_list_by_status_pages_through_dead_rows_with_their_reasons(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 5)
        for outbox_id in ids[:3]:
            assert repository.mark_dead(route, outbox_id, reason=f"poison {outbox_id}")

        first_page = repository.list_by_status(route, Status.DEAD, limit=2)
        second_page = repository.list_by_status(
            route, Status.DEAD, limit=2, after_id=first_page[-1].id
        )

        assert [m.id for m in first_page + second_page] == ids[:3]
        assert [m.last_error for m in first_page] == [f"poison {i}" for i in ids[:2]]
        assert [m.id for m in repository.list_by_status(route, Status.PENDING)] == ids[3:]
        assert repository.list_by_status(route, Status.CONSUMED) == []

    # ------------------------------------------------------------------ operations

    def test_count_by_status_lists_every_status(self, repository: Repository, route: Route) -> None:
        assert repository.count_by_status(route) == dict.fromkeys(Status, 0)
        ids = self.add(repository, route, 4)
        claim = repository.claim_due(route, limit=1, lease_seconds=60)
        repository.mark_published(route, [ids[0]], token=claim.token)
        repository.mark_consumed(route, ids[1])
        repository.mark_dead(route, ids[2], reason="x")
        assert repository.count_by_status(route) == {
            Status.PENDING: 1,
            Status.PUBLISHED: 1,
            Status.CONSUMED: 1,
            Status.DEAD: 1,
        }

    def test_oldest_pending_age(self, repository: Repository, route: Route) -> None:
        assert repository.oldest_pending_age(route) is None
        [outbox_id] = self.add(repository, route)
        age = repository.oldest_pending_age(route)
        assert age is not None
        assert 0 <= age < SLACK.total_seconds()
        repository.mark_consumed(route, outbox_id)
        assert repository.oldest_pending_age(route) is None

    # ------------------------------------------------------------------ admin

    def test_find_rows_filters_by_type_key_error_and_time_and_pages(
        self, repository: Repository, routes: tuple[Route, Route]
    ) -> None:
        route = routes[0]
        ids = self.add(repository, route, 4, message_key="k1")
        other_key = self.add(repository, route, 1, message_key="k2")
        for outbox_id in ids[:3]:
            repository.mark_dead(route, outbox_id, reason=f"boom_% {outbox_id}")
        repository.mark_dead(route, other_key[0], reason="quiet")
        dead = RowFilter(status=Status.DEAD)

        assert [m.id for m in repository.find_rows(route, dead)] == ids[:3] + other_key
        assert [m.id for m in repository.find_rows(route, dead, limit=2)] == ids[:2]
        assert [m.id for m in repository.find_rows(route, dead, after_id=ids[1])] == [
            ids[2],
            other_key[0],
        ]
        by_key = RowFilter(status=Status.DEAD, message_key="k2")
        assert [m.id for m in repository.find_rows(route, by_key)] == other_key
        # LIKE wildcards in the text are taken literally
        by_error = RowFilter(status=Status.DEAD, error_contains="m_% ")
        assert [m.id for m in repository.find_rows(route, by_error)] == ids[:3]
        assert repository.count_rows(route, RowFilter(status="dead", error_contains="%")) == 3
        assert repository.count_rows(route, RowFilter(status="dead", error_contains="x%")) == 0
        assert repository.count_rows(route, RowFilter(status="dead", event_types=[TYPE_B])) == 0
        assert repository.count_rows(route, RowFilter(status="dead", event_types=[TYPE_A])) == 4
        assert repository.count_rows(route, RowFilter(status="dead", ids=[ids[0], ids[3]])) == 1
        assert repository.count_rows(route, RowFilter(status=Status.PENDING)) == 1
        now = repository.now()
        assert repository.count_rows(route, attrs.evolve(dead, changed_before=now - SLACK)) == 0
        assert repository.count_rows(route, attrs.evolve(dead, changed_after=now - SLACK)) == 4
        assert repository.count_rows(route, attrs.evolve(dead, changed_before=now + SLACK)) == 4
        assert repository.count_rows(routes[1], dead) == 0

    def test_requeue_rows_changes_only_dead_rows_and_reports_them(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 3, max_retry=1)
        for outbox_id in ids[:2]:
            repository.schedule_retry(route, outbox_id, reason="gone", backoff=lambda _n: 1)

        assert repository.requeue_rows(route, [ids[0], ids[2], 987654321]) == {ids[0]}
        assert repository.requeue_rows(route, [ids[0]]) == set()
        assert repository.requeue_rows(route, []) == set()

        row = repository.get(route, ids[0])
        assert row is not None
        assert row.status is Status.PENDING and row.retry_count == 0
        assert self.status(repository, route, ids[1]) is Status.DEAD
        assert ids[0] in [m.id for m in self.claim_all(repository, route).messages]

    def test_delete_rows_deletes_only_rows_still_in_the_status(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 4)
        repository.mark_consumed(route, ids[0])
        repository.mark_consumed(route, ids[1])
        repository.mark_dead(route, ids[2], reason="x")

        assert repository.delete_rows(route, ids, status=Status.CONSUMED) == set(ids[:2])
        assert repository.delete_rows(route, ids, status=Status.CONSUMED) == set()
        assert repository.delete_rows(route, [], status=Status.DEAD) == set()
        assert repository.get(route, ids[0]) is None
        assert self.status(repository, route, ids[2]) is Status.DEAD
        assert self.status(repository, route, ids[3]) is Status.PENDING

    def test_delete_rows_spares_a_row_changed_since_the_cutoff(
        self, repository: Repository, route: Route
    ) -> None:
        (old,) = self.add(repository, route, 1)
        repository.mark_dead(route, old, reason="x")
        cutoff = repository.now() - timedelta(hours=1)  # the row changed after it
        assert repository.delete_rows(route, [old], status=Status.DEAD, changed_before=cutoff) == (
            set()
        )
        assert self.status(repository, route, old) is Status.DEAD
        later = repository.now() + timedelta(hours=1)
        assert repository.delete_rows(route, [old], status=Status.DEAD, changed_before=later) == {
            old
        }

    def test_status_figures_stuck_published_and_retry_counts(
        self, repository: Repository, route: Route
    ) -> None:
        assert repository.retry_counts(route) == {}
        ids = self.add(repository, route, 4)
        claim = self.claim_all(repository, route)
        repository.mark_published(route, ids[:2], token=claim.token)
        repository.release(route, ids[2:], token=claim.token, delay=0)
        repository.schedule_retry(route, ids[2], reason="again", backoff=lambda _n: 0)
        repository.schedule_retry(route, ids[2], reason="again", backoff=lambda _n: 0)
        repository.mark_consumed(route, ids[0])

        assert repository.count_published_before(route, older_than=3600) == 0
        assert repository.count_published_before(route, older_than=0) == 1
        assert repository.retry_counts(route) == {0: 2, 2: 1}

    def test_housekeeping_lock_is_held_by_one_holder_at_a_time(
        self, repository: Repository, engine: sa.Engine, unique: str
    ) -> None:
        from outboxkit.backends import SqlRepository

        other = SqlRepository(engine)
        try:
            with repository.housekeeping_lock(f"contract-{unique}") as first:
                assert first
                with other.housekeeping_lock(f"contract-{unique}") as second:
                    assert bool(second) is not self.supports_concurrent_claims
                with other.housekeeping_lock(f"contract-other-{unique}") as unrelated:
                    assert unrelated
            with other.housekeeping_lock(f"contract-{unique}") as after_release:
                assert after_release
        finally:
            other.close()

    def test_now_is_naive_utc_by_the_database_clock(self, repository: Repository) -> None:
        now = repository.now()
        assert now.tzinfo is None
        # same machine in the test setup: the server clock agrees with ours within minutes
        assert abs(now - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=5)
