"""The :class:`~outboxkit.store.ConsumeStore` part of the repository suite: a handler's
writes committed with the ``consumed`` mark or rolled back with it, one row at a time and in
batches (savepoints, lock order, identity checks, stopping), at most once under concurrent
calls. Includes the failure marks and the row reads
(:class:`~outboxkit.testing.repository_contract.failures.FailureMarksContract`,
:class:`~outboxkit.testing.repository_contract.reads.RowReadsContract`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.messages import Outcome, Status
from outboxkit.routing import Route
from outboxkit.store import ConsumeItem, Repository
from outboxkit.testing.repository_contract.base import (
    JOIN_TIMEOUT,
    _outcome,
    _run_thread,
    _statements_in_flight,
    _wait_until_blocked,
)
from outboxkit.testing.repository_contract.failures import FailureMarksContract
from outboxkit.testing.repository_contract.reads import RowReadsContract


class ConsumeStoreContract(FailureMarksContract, RowReadsContract):
    """Behaviour of :class:`~outboxkit.store.ConsumeStore`: ``consume``, ``consume_batch`` and
    ``mark_consumed``, besides its failure marks and row reads.

    Beyond its role it calls ``create_schema`` (fixtures), ``transaction`` and
    ``add`` (rows), ``claim_due`` and ``mark_published`` (rows in ``published``).
    """

    # ------------------------------------------------------------------ consume

    def test_mark_consumed_and_mark_dead_work_from_published(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 2)
        claim = self.claim_all(repository, route)
        repository.mark_published(route, ids, token=claim.token)
        assert repository.mark_consumed(route, ids[0])
        assert repository.mark_dead(route, ids[1], reason="no handler")
        assert self.status(repository, route, ids[0]) is Status.CONSUMED
        assert self.status(repository, route, ids[1]) is Status.DEAD

    @pytest.mark.parametrize("mark", ["consumed", "dead"])
    def test_a_guarded_mark_needs_the_rows_event_id_and_type_and_a_published_row(
        self, repository: Repository, route: Route, mark: str
    ) -> None:
        """A receipt's mark: only a ``published`` row that is the named event."""
        [outbox_id] = self.add(repository, route)
        row = repository.get(route, outbox_id)
        assert row is not None and row.event_id is not None

        def apply(**guard: Any) -> bool:
            if mark == "consumed":
                return repository.mark_consumed(route, outbox_id, **guard)
            return repository.mark_dead(route, outbox_id, reason="reported", **guard)

        right = {"event_id": row.event_id, "event_type": row.event_type}
        # pending: never sent, so a published-only mark refuses it
        assert not apply(**right, published_only=True)
        claim = self.claim_all(repository, route)
        assert not apply(**right, published_only=True)  # claimed, still not sent
        repository.mark_published(route, [outbox_id], token=claim.token)
        published = repository.get(route, outbox_id)
        assert published is not None and published.status is Status.PUBLISHED
        # published, but another event type or event id: untouched, every column
        assert not apply(event_id=row.event_id, event_type="other.type", published_only=True)
        assert not apply(event_id="forged", event_type=row.event_type, published_only=True)
        assert repository.get(route, outbox_id) == published
        # the very event, published
        assert apply(**right, published_only=True)
        assert self.status(repository, route, outbox_id) is Status(mark)
        assert not apply(**right, published_only=True)  # final now

    def test_consume_commits_handler_writes_with_the_status(
        self, engine: sa.Engine, repository: Repository, route: Route, business: sa.Table
    ) -> None:
        [outbox_id] = self.add(repository, route)

        def handler(conn: Connection) -> str:
            conn.execute(business.insert().values(id=7, note="shipped"))
            return "done"

        result = repository.consume(route, outbox_id, handler)
        assert result.outcome is Outcome.CONSUMED
        assert result.value == "done"
        row = repository.get(route, outbox_id)
        assert row is not None
        assert row.status is Status.CONSUMED
        assert row.consumed_at is not None
        with engine.connect() as conn:
            assert conn.execute(sa.select(business.c.note)).scalar_one() == "shipped"

    def test_consume_rolls_back_everything_when_the_handler_raises(
        self, engine: sa.Engine, repository: Repository, route: Route, business: sa.Table
    ) -> None:
        [outbox_id] = self.add(repository, route)
        error = ValueError("handler broke")

        def handler(conn: Connection) -> None:
            conn.execute(business.insert().values(id=7, note="shipped"))
            raise error

        with pytest.raises(ValueError) as caught:
            repository.consume(route, outbox_id, handler)
        assert caught.value is error
        assert self.status(repository, route, outbox_id) is Status.PENDING
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(business)).scalar() == 0

    # ------------------------------------------------------------------ batches

    def _item(self, outbox_id: int, run: Callable[[Connection], Any], **kwargs: Any) -> Any:
        return ConsumeItem(
            outbox_id=outbox_id,
            event_id=kwargs.get("event_id"),
            event_type=kwargs.get("event_type"),
            run=run,
        )

    def test_consume_batch_commits_every_handler_and_marks_every_row_at_once(
        self, engine: sa.Engine, repository: Repository, route: Route, business: sa.Table
    ) -> None:
        ids = self.add(repository, route, 4)
        order: list[int] = []

        def handler(outbox_id: int) -> Callable[[Connection], int]:
            def run(conn: Connection) -> int:
                order.append(outbox_id)
                conn.execute(business.insert().values(id=outbox_id, note=f"n{outbox_id}"))
                return outbox_id

            return run

        batch = list(reversed(ids))  # the order given, not id order, is the order run
        results = repository.consume_batch(route, [self._item(i, handler(i)) for i in batch])
        assert [r.outcome for r in results] == [Outcome.CONSUMED] * 4
        assert [r.value for r in results] == batch
        assert order == batch
        assert {self.status(repository, route, i) for i in ids} == {Status.CONSUMED}
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(business)).scalar() == 4

    def test_a_handler_failing_mid_batch_rolls_back_only_its_own_writes(
        self, engine: sa.Engine, repository: Repository, route: Route, business: sa.Table
    ) -> None:
        first, middle, last = self.add(repository, route, 3)
        error = ValueError("the middle one breaks")
        calls: list[int] = []

        def handler(outbox_id: int) -> Callable[[Connection], None]:
            def run(conn: Connection) -> None:
                calls.append(outbox_id)
                conn.execute(business.insert().values(id=outbox_id, note="written"))
                if outbox_id == middle:
                    raise error

            return run

        results = repository.consume_batch(
            route, [self._item(i, handler(i)) for i in (first, middle, last)]
        )
        assert [r.outcome for r in results] == [
            Outcome.CONSUMED,
            Outcome.FAILED,
            Outcome.CONSUMED,
        ]
        assert results[1].error is error
        assert calls.count(middle) == 1  # a failed handler is not run again in the replay
        assert self.status(repository, route, first) is Status.CONSUMED
        assert self.status(repository, route, middle) is Status.PENDING
        assert self.status(repository, route, last) is Status.CONSUMED
        with engine.connect() as conn:
            written = set(conn.execute(sa.select(business.c.id)).scalars())
        assert written == {first, last}  # each effect exactly once, the failed one's none

    def test_consume_batch_acts_only_on_rows_that_are_the_named_event(
        self, repository: Repository, route: Route
    ) -> None:
        [outbox_id] = self.add(repository, route)
        row = repository.get(route, outbox_id)
        assert row is not None and row.event_id is not None
        calls: list[Connection] = []
        results = repository.consume_batch(
            route,
            [
                self._item(outbox_id, calls.append, event_id="forged"),
                self._item(outbox_id, calls.append, event_id=row.event_id, event_type="other"),
                self._item(987654321, calls.append, event_id=row.event_id),
            ],
        )
        assert [r.outcome for r in results] == [
            Outcome.MISMATCH,
            Outcome.MISMATCH,
            Outcome.MISSING,
        ]
        assert calls == []
        assert repository.get(route, outbox_id) == row  # untouched, every column
        assert not repository.mark_dead(route, outbox_id, reason="x", event_id="forged")
        assert not repository.mark_consumed(route, outbox_id, event_id="forged")
        assert not repository.mark_dead(
            route, outbox_id, reason="x", event_id=row.event_id, event_type="other"
        )
        assert not repository.mark_consumed(
            route, outbox_id, event_id=row.event_id, event_type="other"
        )
        assert self.status(repository, route, outbox_id) is Status.PENDING
        assert repository.mark_dead(route, outbox_id, reason="x", event_id=row.event_id)

    def test_consume_batch_runs_a_row_once_and_stops_when_asked(
        self, repository: Repository, route: Route
    ) -> None:
        first, second, third = self.add(repository, route, 3)
        before = repository.get(route, third)
        calls: list[int] = []

        def handler(outbox_id: int) -> Callable[[Connection], None]:
            return lambda _conn: calls.append(outbox_id)

        results = repository.consume_batch(
            route,
            [
                self._item(first, handler(first)),
                self._item(first, handler(first)),  # delivered twice in one batch
                self._item(second, handler(second)),
                self._item(third, handler(third)),
            ],
            should_stop=lambda: len(calls) >= 2,
        )
        assert [r.outcome for r in results] == [
            Outcome.CONSUMED,
            Outcome.DUPLICATE,
            Outcome.CONSUMED,
            Outcome.NOT_RUN,
        ]
        assert calls == [first, second]
        assert repository.get(route, third) == before  # not run: untouched, every column
        assert repository.consume_batch(route, []) == []

    def test_consume_batch_treats_a_status_it_does_not_know_as_not_open(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        """Only ``pending`` and ``published`` rows are consumed, whatever else the (free
        text) column holds: a batch may mark first and test "not final", but a row in
        another status must end as it was, its message a duplicate."""
        odd, fine = self.add(repository, route, 2)
        table = sa.table(route.table, sa.column("id"), sa.column("status"))
        with engine.begin() as conn:
            conn.execute(table.update().where(table.c.id == odd).values(status="archived"))
        calls: list[int] = []
        results = repository.consume_batch(
            route,
            [
                self._item(odd, lambda _conn: calls.append(odd)),
                self._item(fine, lambda _conn: calls.append(fine)),
            ],
        )
        assert [r.outcome for r in results] == [
            Outcome.DUPLICATE,
            Outcome.CONSUMED,
        ]
        assert calls == [fine]
        with engine.connect() as conn:
            status = conn.execute(sa.select(table.c.status).where(table.c.id == odd)).scalar()
        assert status == "archived"
        assert self.status(repository, route, fine) is Status.CONSUMED

    def test_consume_skips_final_and_missing_rows(
        self, repository: Repository, route: Route
    ) -> None:
        consumed, dead = self.add(repository, route, 2)
        repository.mark_consumed(route, consumed)
        repository.mark_dead(route, dead, reason="x")
        calls: list[Connection] = []
        for outbox_id, outcome in (
            (consumed, Outcome.DUPLICATE),
            (dead, Outcome.DUPLICATE),
            (987654321, Outcome.MISSING),
        ):
            result = repository.consume(route, outbox_id, calls.append)
            assert result.outcome is outcome
            assert result.value is None
        assert calls == []

    def test_consume_batch_locks_rows_in_id_order_final_ones_included(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        """A relay's mark locks every named row in id order; a consume that locked the open
        rows first and a final one after could deadlock with it. While row 2 (consumed) is
        held elsewhere, a batch of rows 1..3 must wait on 2 *before* taking 3."""
        if engine.dialect.name == "sqlite":
            pytest.skip("SQLite has no row locks (one writer at a time)")
        first, done, last = self.add(repository, route, 3)
        assert repository.mark_consumed(route, done)
        lock_one = f"SELECT id FROM {route.table} WHERE id = :id FOR UPDATE"
        with engine.connect() as holder, _statements_in_flight() as in_flight:
            holder.begin()
            holder.execute(sa.text(lock_one), {"id": done})
            run = _run_thread(
                lambda: repository.consume_batch(
                    route, [self._item(i, lambda _conn: None) for i in (first, done, last)]
                )
            )
            # the batch is now waiting for row 2 (waited for: a batch not yet started would
            # leave row 3 free too)
            _wait_until_blocked(engine, route.table, run[0].name, in_flight)
            with engine.connect() as probe:
                probe.begin()
                probe.execute(sa.text(lock_one + " NOWAIT"), {"id": last})  # row 3 is free
                probe.rollback()
            holder.rollback()
        outcomes = [r.outcome for r in _outcome(*run)]
        assert outcomes == [
            Outcome.CONSUMED,
            Outcome.DUPLICATE,
            Outcome.CONSUMED,
        ]

    def test_two_threads_consuming_one_row_run_the_handler_once(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        [outbox_id] = self.add(repository, route)
        barrier = threading.Barrier(2)
        calls: list[int] = []
        lock = threading.Lock()
        names = [f"consume-{outbox_id}-{n}" for n in range(2)]

        def handler(_conn: Connection) -> None:
            with lock:
                calls.append(1)
            # The handler's transaction stays open until the other consumer waits for the
            # row: the two really overlap, the second is not merely late
            [other] = [n for n in names if n != threading.current_thread().name]
            _wait_until_blocked(engine, route.table, other, in_flight)

        def consume() -> Outcome:
            barrier.wait(JOIN_TIMEOUT)
            return repository.consume(route, outbox_id, handler).outcome

        with _statements_in_flight() as in_flight:
            runs = [_run_thread(consume, name) for name in names]
            outcomes = sorted(_outcome(*run).value for run in runs)
        assert outcomes == ["consumed", "duplicate"]
        assert calls == [1]
