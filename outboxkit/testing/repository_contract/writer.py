"""The :class:`~outboxkit.store.OutboxWriter` part of the repository suite: rows written in
the caller's transaction (through the :class:`~outboxkit.publish.publisher.Publisher`, as
applications write them), duplicates skipped without harm, bad input refused before the
database, and rows the Go relay can read."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from outboxkit.errors import InvalidEventError, UnknownEventTypeError
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher, PublisherConfig
from outboxkit.routing import Route, Routing
from outboxkit.store import NewMessage, Repository
from outboxkit.testing.repository_contract.base import (
    TYPE_A,
    TYPE_B,
    RepositoryContractBase,
    _new_message,
    _outcome,
    _request,
    _run_thread,
)


class OutboxWriterContract(RepositoryContractBase):
    """Behaviour of :class:`~outboxkit.store.OutboxWriter`: ``add`` and ``transaction``.

    Beyond its role it calls ``create_schema`` (fixtures), ``claim_due`` and
    ``mark_published`` (relays claiming while callers write), ``get_by_event_id``,
    ``count_by_status`` and ``now``.
    """

    # ------------------------------------------------------------------ publishing

    def test_publishing_while_relays_claim_never_fails_the_callers_transaction(
        self,
        engine: sa.Engine,
        publisher: Publisher,
        repository: Repository,
        route: Route,
        business: sa.Table,
    ) -> None:
        """A claim must not lock the gap where new rows go.

        Under InnoDB's REPEATABLE READ a claim's next-key locks deadlock with a caller's
        INSERT, which aborts the caller's business transaction: an outbox must never do
        that to its user.
        """
        events = 300
        stop = threading.Event()

        def relay() -> int:
            claimed = 0
            while not stop.is_set():
                claim = repository.claim_due(route, limit=20, lease_seconds=60)
                ids = [m.id for m in claim.messages]
                claimed += len(repository.mark_published(route, ids, token=claim.token))
            return claimed

        def publish(first: int) -> None:
            for n in range(first, events, 3):
                with engine.begin() as conn:
                    conn.execute(business.insert().values(id=n, note="order"))
                    publisher.publish(_request(message_key=f"k{n % 5}"), connection=conn)

        relays = [_run_thread(relay) for _ in range(2 if self.supports_concurrent_claims else 1)]
        try:
            for run in [_run_thread(functools.partial(publish, first)) for first in range(3)]:
                _outcome(*run)  # a deadlock in the caller's transaction is raised here
        finally:
            stop.set()
        published = sum(_outcome(*r) for r in relays)
        published += len(self.claim_all(repository, route).messages)
        assert published == events

    def test_publish_in_caller_connection_commits_with_business_row(
        self, engine: sa.Engine, publisher: Publisher, route: Route, business: sa.Table
    ) -> None:
        with engine.begin() as conn:
            conn.execute(business.insert().values(id=1, note="order"))
            event_id = publisher.publish(_request(), connection=conn)
        [row] = self.rows(engine, route)
        assert row["event_id"] == event_id
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(business)).scalar() == 1

    def test_publish_in_caller_connection_rolls_back_with_business_row(
        self, engine: sa.Engine, publisher: Publisher, route: Route, business: sa.Table
    ) -> None:
        with engine.connect() as conn:
            conn.execute(business.insert().values(id=1, note="order"))
            publisher.publish(_request(), connection=conn)
            conn.rollback()
        assert self.rows(engine, route) == []
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(business)).scalar() == 0

    @pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
    def test_publish_in_orm_session_follows_the_session(
        self,
        engine: sa.Engine,
        publisher: Publisher,
        route: Route,
        business: sa.Table,
        commit: bool,
    ) -> None:
        with Session(engine) as session:
            session.execute(business.insert().values(id=1, note="order"))
            event_id = publisher.publish(_request(), connection=session)
            if commit:
                session.commit()
            else:
                session.rollback()
        rows = self.rows(engine, route)
        assert [r["event_id"] for r in rows] == ([event_id] if commit else [])

    def test_publish_without_connection_commits_its_own_transaction(
        self, repository: Repository, publisher: Publisher, route: Route
    ) -> None:
        event_id = publisher.publish(_request(message_key="k1"))
        row = repository.get_by_event_id(route, event_id)
        assert row is not None
        assert row.status is Status.PENDING
        assert row.message_key == "k1"

    def test_repeated_event_id_in_one_transaction_writes_one_row(
        self, engine: sa.Engine, publisher: Publisher, route: Route
    ) -> None:
        request = _request()
        with engine.begin() as conn:
            first = publisher.publish(request, connection=conn)
            second = publisher.publish(request, connection=conn)
            # the transaction is still usable after the skipped duplicate
            conn.execute(sa.text("SELECT 1"))
        assert first == second == request.event_id
        assert len(self.rows(engine, route)) == 1

    def test_repeated_event_id_across_transactions_writes_nothing(
        self, engine: sa.Engine, repository: Repository, publisher: Publisher, route: Route
    ) -> None:
        request = _request()
        assert publisher.publish(request) == request.event_id
        assert publisher.publish_many([request, request]) == [request.event_id] * 2
        [row] = self.rows(engine, route)
        message = NewMessage(
            event_id=request.event_id, event_type=TYPE_A, message_key="", payload="{}"
        )
        with repository.transaction() as conn:
            [result] = repository.add(conn, route, [message])
        assert result.created is False
        assert result.outbox_id == row["id"]
        # Optional (it lets the publisher report a changed payload), but never wrong.
        assert result.existing_payload in (None, row["payload"])
        assert len(self.rows(engine, route)) == 1

    def test_add_reports_created_and_existing_rows(
        self, repository: Repository, route: Route
    ) -> None:
        old = _new_message()
        [first] = self.add_messages(repository, route, [old])
        new = _new_message()
        results = self.add_messages(repository, route, [old, new, new])
        assert [r.created for r in results] == [False, True, False]
        assert results[0].outbox_id == first.outbox_id
        assert results[1].outbox_id == results[2].outbox_id != first.outbox_id

    def add_messages(
        self, repository: Repository, route: Route, messages: list[NewMessage]
    ) -> list[Any]:
        with repository.transaction() as conn:
            return repository.add(conn, route, messages)

    def test_publish_many_groups_rows_by_service_table(
        self, engine: sa.Engine, repository: Repository, publisher: Publisher, routes: Any
    ) -> None:
        route_a, route_b = routes
        ids = publisher.publish_many(
            [_request(TYPE_A), _request(TYPE_B), _request(TYPE_A), _request(TYPE_B)]
        )
        rows_a, rows_b = self.rows(engine, route_a), self.rows(engine, route_b)
        assert {r["event_id"] for r in rows_a} == {ids[0], ids[2]}
        assert {r["event_id"] for r in rows_b} == {ids[1], ids[3]}
        assert {r["biz_type"] for r in rows_a} == {TYPE_A}
        assert {r["service_name"] for r in rows_b} == {route_b.service}
        claim = self.claim_all(repository, route_a)
        assert {m.event_id for m in claim.messages} == {ids[0], ids[2]}
        assert repository.count_by_status(route_b)[Status.PENDING] == 2

    @pytest.mark.parametrize(
        ("make", "error"),
        [
            (lambda: _request(""), InvalidEventError),
            (lambda: _request("   "), InvalidEventError),
            (lambda: _request("x" * 65), InvalidEventError),
            (lambda: _request("contract.never_registered"), UnknownEventTypeError),
            (lambda: _request(message_key="k" * 129), InvalidEventError),
            (lambda: _request(payload={"bad": object()}), InvalidEventError),
            (lambda: _request(payload=float("nan")), InvalidEventError),
            (lambda: _request(payload="x" * 2000), InvalidEventError),
            (lambda: _request(event_id="e" * 65), InvalidEventError),
        ],
        ids=[
            "empty-type",
            "blank-type",
            "long-type",
            "unknown-type",
            "long-key",
            "not-json",
            "nan",
            "too-large",
            "long-event-id",
        ],
    )
    def test_bad_input_writes_nothing(
        self,
        engine: sa.Engine,
        publisher: Publisher,
        routes: Any,
        make: Callable[[], PublishRequest],
        error: type[Exception],
    ) -> None:
        publisher = Publisher(
            publisher.repository, publisher.routing, config=PublisherConfig(max_payload_bytes=1000)
        )
        with pytest.raises(error):
            publisher.publish(make())
        with engine.connect() as conn:
            with pytest.raises(error):
                publisher.publish_many([_request(TYPE_B), make(), _request()], connection=conn)
            # nothing was sent to the database, so the caller's transaction is intact
            conn.execute(sa.text("SELECT 1"))
            conn.commit()
        assert self.rows(engine, routes[0]) == []
        assert self.rows(engine, routes[1]) == []

    def test_oversized_payload_error_names_size_and_limit(
        self, repository: Repository, routing: Routing, route: Route
    ) -> None:
        publisher = Publisher(repository, routing, config=PublisherConfig(max_payload_bytes=500))
        with pytest.raises(InvalidEventError, match=r"\d+ bytes.*500"):
            publisher.publish(_request(payload="y" * 600))
        # measured in encoded bytes: 200 three-byte characters are 600 bytes
        with pytest.raises(InvalidEventError):
            publisher.publish(_request(payload="错" * 200))

    def test_our_row_has_every_go_column_as_the_go_relay_expects(
        self, engine: sa.Engine, repository: Repository, publisher: Publisher, route: Route
    ) -> None:
        request = _request(message_key="order-7", payload={"total": 12})
        publisher.publish(request)
        [row] = self.rows(engine, route)
        assert row["biz_type"] == TYPE_A
        assert row["service_name"] == route.service
        assert row["topic"] == route.topic
        assert row["message_key"] == "order-7"
        assert row["status"] == "pending"
        assert row["retry_count"] == 0
        assert row["max_retry"] == 20
        assert row["next_retry_at"] is not None
        assert row["created_at"] is not None
        assert row["updated_at"] is not None
        assert row["last_error"] is None
        assert row["published_at"] is None
        assert row["consumed_at"] is None
        assert row["lease_token"] is None
        shell = json.loads(row["payload"])
        assert shell["event_type"] == TYPE_A
        assert shell["payload"] == {"total": 12}
        assert shell["event_id"] == request.event_id
        assert shell["event_version"] == "v1"
        assert shell["aggregate_id"] == "order-7"
        # due at once by the database clock
        assert row["next_retry_at"] <= repository.now()

    # ------------------------------------------------------------------ transactions

    def test_transaction_commits_on_success_and_rolls_back_on_error(
        self, engine: sa.Engine, repository: Repository, route: Route
    ) -> None:
        with repository.transaction() as conn:
            repository.add(conn, route, [_new_message()])
        assert len(self.rows(engine, route)) == 1

        class BoomError(Exception):
            pass

        boom = BoomError("no")
        with pytest.raises(BoomError) as caught, repository.transaction() as conn:
            repository.add(conn, route, [_new_message()])
            raise boom
        assert caught.value is boom
        assert len(self.rows(engine, route)) == 1
