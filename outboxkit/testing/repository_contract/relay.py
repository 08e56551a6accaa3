"""The conformance suite of :class:`~outboxkit.store.Repository`, on a real database.

Subclass :class:`RepositoryContract` in a test module (name the subclass ``Test...``) and
provide an ``engine`` fixture; the default ``repository`` fixture wraps it in a
:class:`~outboxkit.backends.sql.SqlRepository`, override it to test your own implementation
(it must write to tables the ``engine`` can read)::

    class TestMyRepository(RepositoryContract):
        @pytest.fixture
        def engine(self, postgres_engine):
            return postgres_engine

Capability flags change what is asserted, never whether a test runs:

* ``supports_concurrent_claims``: two claimers can hold claims at once and a locked row is
  skipped (``FOR UPDATE SKIP LOCKED``). When false (SQLite), the suite asserts the weaker
  property instead: a claim waits for the other writer, and claims are still disjoint.

Every test makes its own tables (unique names) and drops them afterwards.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from outboxkit.errors import InvalidEventError, UnknownEventTypeError
from outboxkit.messages import Outcome, PublishRequest, Status
from outboxkit.publish.publisher import Publisher, PublisherConfig
from outboxkit.routing import Route, Routing, ServiceCatalog
from outboxkit.store import (
    MAX_LAST_ERROR,
    ConsumeItem,
    NewMessage,
    Repository,
    RowFilter,
    truncate_error,
)
from outboxkit.wire.envelope import decode_shell, encode_shell, envelope_from_row

#: Event types the suite routes to the first and the second service.
TYPE_A = "contract.a_happened"
TYPE_B = "contract.b_happened"
#: Tolerance when comparing database timestamps with expectations (slow shared machines).
SLACK = timedelta(seconds=5)
#: How long a thread may take before the suite calls it stuck.
JOIN_TIMEOUT = 20.0


def _request(event_type: str = TYPE_A, **kwargs: Any) -> PublishRequest:
    kwargs.setdefault("payload", {"n": 1})
    return PublishRequest(event_type=event_type, **kwargs)


def _new_message(event_type: str = TYPE_A, *, max_retry: int = 20, **kwargs: Any) -> NewMessage:
    request = _request(event_type, **kwargs)
    return NewMessage(
        event_id=request.event_id,
        event_type=request.event_type,
        message_key=request.message_key,
        payload=encode_shell(request, occurred_at=datetime.now(timezone.utc)),
        max_retry=max_retry,
    )


def _run_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``target`` in a thread; the returned dict gets its ``result`` or ``error``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # re-raised by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _outcome(thread: threading.Thread, box: dict[str, Any]) -> Any:
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "the operation did not finish (blocked on a lock?)"
    if "error" in box:
        raise box["error"]
    return box["result"]


class RepositoryContract:
    """Behaviour every :class:`~outboxkit.store.Repository` must show.

    Needs an ``engine`` fixture (a SQLAlchemy engine on the database under test).
    """

    supports_concurrent_claims: ClassVar[bool] = True
    #: Whether another connection can run DDL while a caller's write transaction is open
    #: (false for SQLite, where every transaction holds the single write lock).
    ddl_beside_open_writers: ClassVar[bool] = True

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def unique(self) -> str:
        """A short unique suffix for this test's table names."""
        return uuid.uuid4().hex[:10]

    @pytest.fixture
    def repository(self, engine: sa.Engine) -> Iterator[Repository]:
        from outboxkit.backends import SqlRepository

        repository = SqlRepository(engine)
        yield repository
        repository.close()

    @pytest.fixture
    def routing(self, unique: str) -> Routing:
        """Two services with their own tables: A owns :data:`TYPE_A`, B :data:`TYPE_B`."""
        catalog = ServiceCatalog(namespace=f"contract-{unique}")
        catalog.configure(f"svc-a-{unique}", table=f"okc_{unique}_a")
        catalog.configure(f"svc-b-{unique}", table=f"okc_{unique}_b")
        routing = Routing(catalog)
        routing.register(TYPE_A, f"svc-a-{unique}")
        routing.register(TYPE_B, f"svc-b-{unique}")
        return routing

    @pytest.fixture
    def routes(
        self, repository: Repository, routing: Routing, engine: sa.Engine
    ) -> Iterator[tuple[Route, Route]]:
        """The two routes, their tables created; dropped after the test."""
        route_a, route_b = routing.route_of(TYPE_A), routing.route_of(TYPE_B)
        repository.create_schema([route_a, route_b])
        yield route_a, route_b
        _drop(engine, route_a.table, route_b.table)

    @pytest.fixture
    def route(self, routes: tuple[Route, Route]) -> Route:
        return routes[0]

    @pytest.fixture
    def publisher(self, repository: Repository, routing: Routing) -> Publisher:
        return Publisher(repository, routing)

    @pytest.fixture
    def business(self, engine: sa.Engine, unique: str) -> Iterator[sa.Table]:
        """A business table the tests write next to outbox rows."""
        table = sa.Table(
            f"okc_{unique}_biz",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("note", sa.String(100), nullable=False),
        )
        table.create(engine)
        yield table
        _drop(engine, table.name)

    # ------------------------------------------------------------------ helpers

    def add(self, repository: Repository, route: Route, n: int = 1, **kwargs: Any) -> list[int]:
        event_type = TYPE_A if route.table.endswith("_a") else TYPE_B
        with repository.transaction() as conn:
            results = repository.add(
                conn, route, [_new_message(event_type, **kwargs) for _ in range(n)]
            )
        return [r.outbox_id for r in results]

    def rows(self, engine: sa.Engine, route: Route) -> list[dict[str, Any]]:
        """Every row of the route's table, read with plain SQL (not through the repository)."""
        table = sa.Table(route.table, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(table.select().order_by(table.c.id)).mappings()]

    def status(self, repository: Repository, route: Route, outbox_id: int) -> Status:
        row = repository.get(route, outbox_id)
        assert row is not None
        return row.status

    def claim_all(self, repository: Repository, route: Route, lease: float = 60.0) -> Any:
        return repository.claim_due(route, limit=1000, lease_seconds=lease)

    # ------------------------------------------------------------------ schema

    def test_create_schema_is_idempotent_and_leaves_the_callers_transaction_alone(
        self, engine: sa.Engine, repository: Repository, routing: Routing, unique: str
    ) -> None:
        first, second = routing.route_of(TYPE_A), routing.route_of(TYPE_B)
        scratch = f"okc_{unique}_scratch"
        try:
            repository.create_schema([first])
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE TABLE {scratch} (n int)")
            if self.ddl_beside_open_writers:
                with engine.connect() as caller:
                    caller.exec_driver_sql(f"INSERT INTO {scratch} VALUES (1)")
                    # DDL commits implicitly on MySQL: it must not use the caller's connection
                    repository.create_schema([first, second])
                    caller.rollback()
            else:
                repository.create_schema([first, second])
            repository.create_schema([first, second])
            with engine.connect() as conn:
                assert conn.exec_driver_sql(f"SELECT count(*) FROM {scratch}").scalar() == 0
            assert sa.inspect(engine).has_table(second.table)
        finally:
            _drop(engine, first.table, second.table, scratch)

    def test_table_for_puts_the_create_schema_table_on_the_applications_metadata(
        self, engine: sa.Engine, repository: Repository, routing: Routing
    ) -> None:
        # Given an application's own MetaData (as Alembic's target_metadata)
        route = routing.route_of(TYPE_A)
        metadata = sa.MetaData()
        # When the repository puts the route's table on it, twice
        table = repository.table_for(route, metadata)
        assert repository.table_for(route, metadata) is table
        assert repository.tables([route], metadata) == [table]
        assert metadata.tables[route.table] is table
        try:
            # Then a table created from that metadata (not by create_schema) is the one the
            # repository needs: create_schema finds nothing missing, rows flow through it
            metadata.create_all(engine)
            created = {i["name"] for i in sa.inspect(engine).get_indexes(route.table)}
            assert created == {i.name for i in table.indexes}
            repository.create_schema([route])
            inspector = sa.inspect(engine)
            assert {i["name"] for i in inspector.get_indexes(route.table)} == created
            assert {c["name"] for c in inspector.get_columns(route.table)} == set(table.c.keys())
            ids = self.add(repository, route, 2)
            claim = self.claim_all(repository, route)
            assert sorted(m.id for m in claim.messages) == ids
        finally:
            _drop(engine, route.table)

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
        with engine.connect() as other:
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
                time.sleep(0.3)
                assert thread.is_alive(), "SQLite claim should wait for the other writer"
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
        self, repository: Repository, route: Route
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
            time.sleep(0.3)

        assert repository.consume(route, outbox_id, handler).outcome is Outcome.CONSUMED
        assert _outcome(*runs[0]) == set()
        assert self.status(repository, route, outbox_id) is Status.CONSUMED

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

    # ------------------------------------------------------------------ consume

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
        with engine.connect() as holder:
            holder.begin()
            holder.execute(sa.text(lock_one), {"id": done})
            run = _run_thread(
                lambda: repository.consume_batch(
                    route, [self._item(i, lambda _conn: None) for i in (first, done, last)]
                )
            )
            time.sleep(0.5)  # the batch is now waiting for row 2
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
        self, repository: Repository, route: Route
    ) -> None:
        [outbox_id] = self.add(repository, route)
        barrier = threading.Barrier(2)
        calls: list[int] = []
        lock = threading.Lock()

        def handler(_conn: Connection) -> None:
            with lock:
                calls.append(1)
            time.sleep(0.2)

        def consume() -> Outcome:
            barrier.wait(JOIN_TIMEOUT)
            return repository.consume(route, outbox_id, handler).outcome

        runs = [_run_thread(consume) for _ in range(2)]
        outcomes = sorted(_outcome(*run).value for run in runs)
        assert outcomes == ["consumed", "duplicate"]
        assert calls == [1]

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

    def test_has_table_tells_a_missing_table(
        self, repository: Repository, route: Route, unique: str
    ) -> None:
        assert repository.has_table(route)
        assert not repository.has_table(Route.by_convention(f"missing-{unique}"))

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

    def test_get_by_event_id(
        self, repository: Repository, publisher: Publisher, route: Route
    ) -> None:
        event_id = publisher.publish(_request(payload=[1, 2]))
        row = repository.get_by_event_id(route, event_id)
        assert row is not None
        assert decode_shell(row.payload).payload == [1, 2]
        assert repository.get_by_event_id(route, "no-such-event") is None
        assert repository.get(route, 987654321) is None


def _drop(engine: sa.Engine, *tables: str) -> None:
    with engine.begin() as conn:
        for name in tables:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
