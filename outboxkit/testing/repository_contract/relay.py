"""The :class:`~outboxkit.store.RelayStore` part of the repository suite: claims (limit,
due order, disjoint under concurrency, leases that expire and fence), the guarded
``mark_published``, ``release`` and the rescue of stale ``published`` rows, on rows we wrote
and rows the Go system wrote. Includes the failure marks
(:class:`~outboxkit.testing.repository_contract.failures.FailureMarksContract`)."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.messages import Outcome, Status
from outboxkit.routing import Route
from outboxkit.store import Repository
from outboxkit.testing.repository_contract.base import (
    JOIN_TIMEOUT,
    SLACK,
    TYPE_A,
    _outcome,
    _run_thread,
    _statements_in_flight,
    _wait_until_blocked,
)
from outboxkit.testing.repository_contract.failures import FailureMarksContract
from outboxkit.wire.envelope import decode_shell, envelope_from_row


class RelayStoreContract(FailureMarksContract):
    """Behaviour of :class:`~outboxkit.store.RelayStore`: ``claim_due``, ``mark_published``,
    ``release`` and ``republish_stale``, besides its failure marks.

    Beyond its role it calls ``create_schema`` (fixtures), ``transaction`` and
    ``add`` (rows), ``get``, ``now``, and ``consume`` and ``mark_consumed``: a consumer's mark
    that a late ``mark_published`` must leave alone.
    """

    # ------------------------------------------------------------------ claims

    def test_claim_respects_limit_and_takes_oldest_first(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 5)
        first = repository.claim_due(route, limit=3, lease_seconds=60)
        assert [m.id for m in first.messages] == ids[:3]
        assert all(m.lease_token == first.token for m in first.messages)
        assert all(m.status is Status.PENDING for m in first.messages)
        second = repository.claim_due(route, limit=3, lease_seconds=60)
        assert [m.id for m in second.messages] == ids[3:]
        assert second.token != first.token
        assert repository.claim_due(route, limit=3, lease_seconds=60).messages == []
        rows = {r["id"]: r for r in self.rows(engine, route)}
        assert {rows[i]["lease_token"] for i in ids[:3]} == {first.token}
        assert {rows[i]["status"] for i in ids} == {"pending"}
        # the lease pushed next_retry_at into the future by the database clock
        now = repository.now()
        assert all(now + timedelta(seconds=50) < rows[i]["next_retry_at"] for i in ids)
        assert all(rows[i]["next_retry_at"] < now + timedelta(seconds=60) + SLACK for i in ids)

    def test_a_claim_is_in_due_order_then_id_order(
        self, repository: Repository, route: Route
    ) -> None:
        """A retried row is due later than rows published after it: it comes after them."""
        ids = self.add(repository, route, 4)
        assert (
            repository.schedule_retry(route, ids[0], reason="boom", backoff=lambda n: 0.0)
            is Outcome.RETRY
        )
        claim = repository.claim_due(route, limit=10, lease_seconds=60)
        assert [m.id for m in claim.messages] == [*ids[1:], ids[0]]

    def test_rows_due_in_the_future_are_not_claimed(
        self, repository: Repository, route: Route
    ) -> None:
        [later, now_id] = self.add(repository, route, 2)
        claim = repository.claim_due(route, limit=1, lease_seconds=60)
        assert [m.id for m in claim.messages] == [later]
        assert repository.release(route, [later], token=claim.token, delay=3600) == {later}
        claim = self.claim_all(repository, route)
        assert [m.id for m in claim.messages] == [now_id]

    def test_two_threads_claim_disjoint_rows(self, repository: Repository, route: Route) -> None:
        ids = self.add(repository, route, 20)
        barrier = threading.Barrier(2)

        def claim() -> list[int]:
            barrier.wait(JOIN_TIMEOUT)
            return [m.id for m in repository.claim_due(route, limit=10, lease_seconds=60).messages]

        runs = [_run_thread(claim) for _ in range(2)]
        first, second = (_outcome(*run) for run in runs)
        assert not set(first) & set(second)
        assert len(first) <= 10 and len(second) <= 10
        # InnoDB may lock one row past the LIMIT, which the other claimer then skips; that
        # row is simply left for the next claim, never lost and never claimed twice.
        rest = [m.id for m in self.claim_all(repository, route).messages]
        assert sorted(first + second + rest) == ids

    def test_a_locked_row_is_skipped_or_waited_for(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 3)
        table = sa.Table(route.table, sa.MetaData(), autoload_with=engine)
        with engine.connect() as other, _statements_in_flight() as in_flight:
            with other.begin():
                # another worker holds row 1 locked (SQLite: holds the database write lock)
                other.execute(sa.select(table.c.id).where(table.c.id == ids[0]).with_for_update())
                if not self.supports_concurrent_claims:
                    other.execute(table.update().where(table.c.id == -1).values(status="x"))
                thread, box = _run_thread(lambda: self.claim_all(repository, route))
                if self.supports_concurrent_claims:
                    claim = _outcome(thread, box)  # SKIP LOCKED: no waiting
                    assert [m.id for m in claim.messages] == ids[1:]
                    return
                # SQLite: the claim waits for the other writer (not: has not started yet)
                _wait_until_blocked(engine, route.table, thread.name, in_flight)
                assert thread.is_alive()
            claim = _outcome(thread, box)
            assert [m.id for m in claim.messages] == ids

    def test_expired_lease_makes_rows_claimable_and_fences_the_old_token(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 2)
        old = repository.claim_due(route, limit=10, lease_seconds=0)
        assert [m.id for m in old.messages] == ids
        new = repository.claim_due(route, limit=10, lease_seconds=60)
        assert [m.id for m in new.messages] == ids
        assert repository.mark_published(route, ids, token=old.token) == set()
        assert repository.release(route, ids, token=old.token, delay=0) == set()
        assert repository.mark_published(route, ids, token=new.token) == set(ids)

    def test_go_written_row_is_claimable_publishable_and_readable(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        go_shell = json.dumps(
            {
                "event_type": TYPE_A,
                "event_version": "v1",
                "aggregate_id": "conv-1",
                "payload": {"message": "你好"},
            },
            ensure_ascii=False,
        )
        now = repository.now() - timedelta(seconds=1)
        insert = sa.text(
            f"INSERT INTO {route.table} (biz_type, service_name, topic, message_key, payload,"
            " status, retry_count, max_retry, next_retry_at, created_at, updated_at)"
            " VALUES (:t, :s, :topic, :k, :p, 'pending', 0, 20, :now, :now, :now)"
        ).bindparams(sa.bindparam("now", type_=sa.DateTime()))
        with engine.begin() as conn:
            conn.execute(
                insert,
                {
                    "t": TYPE_A,
                    "s": route.service,
                    "topic": route.topic,
                    "k": "conv-1",
                    "p": go_shell,
                    "now": now,
                },
            )
        [raw] = self.rows(engine, route)
        assert raw["event_id"] is None
        row = repository.get(route, raw["id"])
        assert row is not None
        assert row.event_id is None
        assert row.event_type == TYPE_A
        claim = self.claim_all(repository, route)
        [message] = claim.messages
        assert message.id == raw["id"]
        assert message.lease_token == claim.token
        envelope = envelope_from_row(message, published_at=repository.now())
        assert envelope.event_id == str(raw["id"])
        assert envelope.payload == {"message": "你好"}
        assert decode_shell(message.payload).aggregate_id == "conv-1"
        assert repository.mark_published(route, [message.id], token=claim.token) == {message.id}
        assert self.status(repository, route, message.id) is Status.PUBLISHED
        assert repository.consume(route, message.id, lambda _c: "ok").value == "ok"

    # ------------------------------------------------------------------ guarded transitions

    def test_mark_published_needs_the_token_and_a_pending_row(
        self, repository: Repository, route: Route
    ) -> None:
        ids = self.add(repository, route, 2)
        claim = self.claim_all(repository, route)
        assert repository.mark_published(route, ids, token=str(uuid.uuid4())) == set()
        assert repository.mark_published(route, [ids[0]], token=claim.token) == {ids[0]}
        assert repository.mark_published(route, ids, token=claim.token) == {ids[1]}
        assert repository.mark_published(route, ids, token=claim.token) == set()
        assert repository.mark_published(route, [], token=claim.token) == set()
        row = repository.get(route, ids[0])
        assert row is not None
        assert row.status is Status.PUBLISHED
        assert row.published_at is not None
        assert row.next_retry_at is None
        assert row.lease_token is None
        assert row.last_error is None

    @pytest.mark.parametrize("meanwhile", ["consume", "mark_consumed", "mark_dead", "retry"])
    def test_late_mark_published_changes_nothing(
        self, repository: Repository, route: Route, meanwhile: str
    ) -> None:
        [outbox_id] = self.add(repository, route)
        claim = self.claim_all(repository, route)
        if meanwhile == "consume":
            repository.consume(route, outbox_id, lambda _c: None)
        elif meanwhile == "mark_consumed":
            assert repository.mark_consumed(route, outbox_id)
        elif meanwhile == "mark_dead":
            assert repository.mark_dead(route, outbox_id, reason="bad payload")
        else:  # the Go residual race: a fast consumer failed and scheduled a retry
            outcome = repository.schedule_retry(
                route, outbox_id, reason="handler failed", backoff=lambda _n: 30.0
            )
            assert outcome is Outcome.RETRY
        before = repository.get(route, outbox_id)
        assert repository.mark_published(route, [outbox_id], token=claim.token) == set()
        assert repository.get(route, outbox_id) == before

    def test_mark_published_waits_for_a_running_consume_then_changes_nothing(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        [outbox_id] = self.add(repository, route)
        claim = self.claim_all(repository, route)
        runs: list[tuple[threading.Thread, dict[str, Any]]] = []

        def handler(_conn: Connection) -> None:
            runs.append(
                _run_thread(
                    lambda: repository.mark_published(route, [outbox_id], token=claim.token)
                )
            )
            # the consume's transaction stays open until the mark waits for its lock
            _wait_until_blocked(engine, route.table, runs[0][0].name, in_flight)

        with _statements_in_flight() as in_flight:
            assert repository.consume(route, outbox_id, handler).outcome is Outcome.CONSUMED
            assert _outcome(*runs[0]) == set()
        assert self.status(repository, route, outbox_id) is Status.CONSUMED

    def test_release_does_not_count_an_attempt(self, repository: Repository, route: Route) -> None:
        ids = self.add(repository, route, 2)
        claim = self.claim_all(repository, route)
        assert repository.release(route, ids, token=str(uuid.uuid4()), delay=0) == set()
        assert repository.release(route, ids, token=claim.token, delay=0) == set(ids)
        assert repository.release(route, [], token=claim.token, delay=0) == set()
        for outbox_id in ids:
            row = repository.get(route, outbox_id)
            assert row is not None
            assert row.retry_count == 0
            assert row.lease_token is None
            assert row.status is Status.PENDING
        again = self.claim_all(repository, route)
        assert [m.id for m in again.messages] == ids
        assert repository.release(route, ids, token=again.token, delay=300) == set(ids)
        row = repository.get(route, ids[0])
        assert row is not None and row.next_retry_at is not None
        assert row.next_retry_at > repository.now() + timedelta(seconds=250)

    # ------------------------------------------------------------------ stale rescue

    def test_republish_stale_counts_an_attempt(self, repository: Repository, route: Route) -> None:
        ids = self.add(repository, route, 2)
        last = self.add(repository, route, 1, max_retry=1)
        claim = self.claim_all(repository, route)
        repository.mark_published(route, ids + last, token=claim.token)
        assert repository.republish_stale(route, older_than=3600, limit=10) == 0
        assert repository.republish_stale(route, older_than=0, limit=2) == 2
        assert repository.republish_stale(route, older_than=0, limit=10) == 1
        again, exhausted = repository.get(route, ids[0]), repository.get(route, last[0])
        assert again is not None and exhausted is not None
        assert again.status is Status.PENDING
        assert again.retry_count == 1
        assert again.last_error is not None
        assert exhausted.status is Status.DEAD
        assert exhausted.retry_count == 1
        assert [m.id for m in self.claim_all(repository, route).messages] == ids

    def published_ago(
        self,
        engine: sa.Engine,
        repository: Repository,
        route: Route,
        ids: list[int],
        seconds: float,
    ) -> None:
        """Set the rows' ``published_at`` ``seconds`` before the database's now (plain SQL)."""
        at = repository.now() - timedelta(seconds=seconds)
        stmt = sa.text(f"UPDATE {route.table} SET published_at = :at WHERE id IN :ids").bindparams(
            sa.bindparam("at", type_=sa.DateTime()), sa.bindparam("ids", expanding=True)
        )
        with engine.begin() as conn:
            conn.execute(stmt, {"at": at, "ids": ids})

    def test_republish_stale_waits_twice_as_long_after_each_attempt(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        """A consumer that is only slow must not see its rows re-sent, and counted, every
        ``older_than``: the wait doubles with ``retry_count``, up to 2**RESCUE_DOUBLINGS."""
        fresh, once, many = (self.add(repository, route) for _ in range(3))
        for row_id, attempts in ((once[0], 1), (many[0], 12)):
            assert (
                repository.schedule_retry(route, row_id, reason="boom", backoff=lambda n: 0.0)
                is Outcome.RETRY
            )
            with engine.begin() as conn:
                conn.execute(
                    sa.text(f"UPDATE {route.table} SET retry_count = :n WHERE id = :id"),
                    {"n": attempts, "id": row_id},
                )
        claim = self.claim_all(repository, route)
        assert sorted(m.id for m in claim.messages) == sorted(fresh + once + many)
        repository.mark_published(route, fresh + once + many, token=claim.token)

        # 150 s ago, rescue after 100 s: only the row never tried (waits 100 s) is due;
        # the row tried once waits 200 s, the row tried 12 times 100 * 2**5 = 3,200 s.
        self.published_ago(engine, repository, route, fresh + once + many, 150)
        assert repository.republish_stale(route, older_than=100, limit=10) == 1
        assert self.status(repository, route, fresh[0]) is Status.PENDING
        self.published_ago(engine, repository, route, once + many, 250)
        assert repository.republish_stale(route, older_than=100, limit=10) == 1
        assert self.status(repository, route, once[0]) is Status.PENDING
        self.published_ago(engine, repository, route, many, 3_000)
        assert repository.republish_stale(route, older_than=100, limit=10) == 0
        self.published_ago(engine, repository, route, many, 3_300)
        assert repository.republish_stale(route, older_than=100, limit=10) == 1
        row = repository.get(route, many[0])
        assert row is not None and row.status is Status.PENDING and row.retry_count == 13
