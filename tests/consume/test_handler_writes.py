"""A handler's writes commit with its ``consumed`` mark or not at all, whatever its batch-mates do.

The matrix: the ways users write a handler with an ORM ``Session`` (flush only, commit,
neither, an exception inside, a session never closed, the ``session: Session`` parameter)
and with Core, on PostgreSQL, MariaDB and SQLite, through the outbox consumer and an inbox
consumer, alone in a batch and beside a failing event. Each either keeps its writes with
the ``consumed`` mark or fails loudly (the attempt fails, the row or inbox record says why);
never a ``consumed`` event without its writes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outboxkit import Engine, Event, PublishRequest, Routing
from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import EngineConfig
from outboxkit.errors import HandlerTransactionError
from outboxkit.inbox import SqlInbox
from outboxkit.messages import Status
from outboxkit.retry import RetryPolicy
from outboxkit.routing import ServiceCatalog
from tests.support.engine import fast_config

DATABASES = ["postgres_engine", "mysql_engine", "sqlite_engine"]


def mark_model(table_name: str) -> type[Any]:
    """A mapped class of its own per test (one table per test, one declarative base)."""

    class Base(DeclarativeBase):
        pass

    class Mark(Base):
        __tablename__ = table_name
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
        n: Mapped[int]

    return Mark


# ----------------------------------------------------------------- the handler patterns

#: pattern -> whether its writes are kept (else the attempt must fail loudly).
KEEPS = {
    "flush_only": True,
    "commit": True,
    "session_parameter": True,
    "core": True,
    "neither": False,
    "exception_inside": False,
    "never_closed": False,
}


def make_handler(pattern: str, mark: type[Any], fail_on: int | None) -> Callable[..., None]:
    """The handler users write for ``pattern``; events whose ``n`` is ``fail_on`` raise."""

    def maybe_fail(event: Event) -> None:
        if event.payload["n"] == fail_on:
            raise RuntimeError(f"event {fail_on} fails")

    if pattern == "session_parameter":

        def with_session(event: Event, session: Session) -> None:
            maybe_fail(event)
            session.add(mark(n=event.payload["n"]))

        return with_session

    def handler(event: Event, connection: Connection) -> None:
        maybe_fail(event)
        n = event.payload["n"]
        if pattern == "core":
            connection.execute(sa.insert(mark.__table__).values(n=n))
        elif pattern == "flush_only":
            with Session(bind=connection) as session:
                session.add(mark(n=n))
                session.flush()
        elif pattern == "commit":
            with Session(bind=connection) as session:
                session.add(mark(n=n))
                session.commit()
        elif pattern == "neither":
            with Session(bind=connection) as session:
                session.add(mark(n=n))
        elif pattern == "exception_inside":
            with Session(bind=connection) as session:
                session.add(mark(n=n))
                session.flush()
                raise RuntimeError("inside the session")
        elif pattern == "never_closed":
            session = Session(bind=connection)
            session.add(mark(n=n))
        else:  # pragma: no cover - a typo in the parametrisation
            raise AssertionError(pattern)

    return handler


# ----------------------------------------------------------------- one stack per test


class Stack:
    """A producer engine and a consumer engine (outbox or inbox) on one database, an
    in-process broker, stepped with ``run_once``."""

    def __init__(self, db: sa.Engine, *, inbox: bool) -> None:
        unique = uuid.uuid4().hex[:10]
        self.db = db
        self.mark = mark_model(f"marks_{unique}")
        self.mark.__table__.create(db)
        catalog = ServiceCatalog(namespace=f"hw-{unique}")
        catalog.configure("things", table=f"t_{unique}_outbox", inbox=inbox)
        self.routing = Routing(catalog)
        self.routing.register("thing.happened", "things")
        self.route = self.routing.route_of_service("things")
        broker = MemoryBroker()
        # The default retry policy: a failed event is not due again during the test.
        retry = RetryPolicy()
        self.inbox = SqlInbox(db, table=f"t_{unique}_inbox") if inbox else None
        self.producer = Engine(
            SqlRepository(db),
            broker,
            self.routing,
            config=fast_config(retry=retry, relay_services=("things",)),
        )
        self.consumer = (
            Engine(
                SqlRepository(db),
                broker.connect(),
                self.routing,
                config=fast_config(retry=retry, relay_services=()),
                inboxes={"things": self.inbox},
            )
            if self.inbox is not None
            else self.producer
        )
        self.producer.create_schema()
        if self.inbox is not None:
            self.inbox.create_schema()

    def publish(self, *ns: int) -> list[str]:
        with self.db.begin() as conn:
            return [
                self.producer.publish(
                    PublishRequest(event_type="thing.happened", payload={"n": n}), connection=conn
                )
                for n in ns
            ]

    def step(self) -> None:
        """One relay step, then one consume step: the published events arrive as one batch."""
        self.producer.run_once(receive_timeout=0.05)
        if self.consumer is not self.producer:
            self.consumer.run_once(receive_timeout=0.05)

    def marks(self) -> list[int]:
        with self.db.connect() as conn:
            return sorted(conn.execute(sa.select(self.mark.n)).scalars())

    def outcome(self, event_id: str) -> tuple[str, str]:
        """``(status, last_error)`` of the event where this consumer records it."""
        if self.inbox is not None:
            record = self.inbox.get(self.route.group, event_id)
            assert record is not None, f"no inbox record for {event_id}"
            return record.status.value, record.last_error or ""
        row = self.producer.repository.get_by_event_id(self.route, event_id)
        assert row is not None
        return row.status.value, row.last_error or ""

    def close(self) -> None:
        self.consumer.stop(timeout=5)
        self.producer.stop(timeout=5)
        tables = [self.route.table, self.mark.__tablename__]
        if self.inbox is not None:
            tables.append(self.inbox.table_name)
        with self.db.begin() as conn:
            for name in tables:
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {quoted}"))


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest) -> sa.Engine:
    engine: sa.Engine = request.getfixturevalue(request.param)
    return engine


def _stack(db: sa.Engine, inbox: bool) -> Iterator[Stack]:
    stack = Stack(db, inbox=inbox)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(params=["outbox", "inbox"])
def stack(request: pytest.FixtureRequest, db: sa.Engine) -> Iterator[Stack]:
    yield from _stack(db, request.param == "inbox")


# ----------------------------------------------------------------- the matrix


@pytest.mark.parametrize("pattern", sorted(KEEPS))
@pytest.mark.parametrize("company", ["alone", "beside_a_failing_event"])
def test_a_handler_keeps_its_writes_with_consumed_or_fails_loudly(
    stack: Stack, pattern: str, company: str
) -> None:
    # Given a handler written in `pattern`, in a batch alone or beside an event that fails
    beside = company == "beside_a_failing_event"
    stack.consumer.register_handler(
        "thing.happened", make_handler(pattern, stack.mark, fail_on=2 if beside else None)
    )
    ns = [1, 2, 3] if beside else [1]
    ids = dict(zip(ns, stack.publish(*ns), strict=True))

    # When the batch is consumed
    stack.step()

    # Then each of its events is consumed with its write, or failed with no write
    writers = [n for n in ns if n != 2 or not beside]
    if KEEPS[pattern]:
        assert stack.marks() == writers
        for n in writers:
            assert stack.outcome(ids[n])[0] == "consumed"
    else:
        assert stack.marks() == []
        for n in writers:
            status, error = stack.outcome(ids[n])
            assert status in ("pending", "failed"), (n, status)
            if pattern != "exception_inside":
                assert "never flushed" in error, error
    if beside:
        status, error = stack.outcome(ids[2])
        assert status in ("pending", "failed")
        assert "event 2 fails" in error


def test_the_reported_reproduction_keeps_the_writes_of_the_events_beside_a_failure(
    postgres_engine: sa.Engine,
) -> None:
    # Given the handler of the report (flush only), events n = 1, 2, 3 where 2 raises
    stack = Stack(postgres_engine, inbox=False)
    try:
        mark = stack.mark

        @stack.producer.register_handler("thing.happened")
        def handle(event: Event, connection: Connection) -> None:
            if event.payload["n"] == 2:
                raise RuntimeError("boom")
            with Session(bind=connection) as session:
                session.add(mark(n=event.payload["n"]))
                session.flush()

        ids = stack.publish(1, 2, 3)
        # When run_once consumes them
        stack.step()
        # Then 1 and 3 are consumed with their marks and 2 waits for its retry
        assert stack.marks() == [1, 3]
        rows = [stack.producer.repository.get_by_event_id(stack.route, i) for i in ids]
        assert [(r.status, r.retry_count) for r in rows if r is not None] == [
            (Status.CONSUMED, 0),
            (Status.PENDING, 1),
            (Status.CONSUMED, 0),
        ]
    finally:
        stack.close()


# ----------------------------------------------------------------- one transaction shape


def test_a_handler_sees_the_same_transaction_in_every_pass(db: sa.Engine) -> None:
    # Given a handler that records the state of its connection
    stack = Stack(db, inbox=False)
    seen: list[tuple[int, bool, bool]] = []
    try:

        @stack.producer.register_handler("thing.happened")
        def look(event: Event, connection: Connection) -> None:
            seen.append(
                (
                    event.payload["n"],
                    connection.in_transaction(),
                    connection.in_nested_transaction(),
                )
            )
            if event.payload["n"] == 2:
                raise RuntimeError("fails")

        # When a batch runs its first pass, fails, and is replayed, then a single event runs
        stack.publish(1, 2, 3)
        stack.step()
        stack.publish(4)
        stack.step()
        # Then every run saw a plain transaction with no savepoint in view
        assert {n for n, _, _ in seen} == {1, 2, 3, 4}
        assert len(seen) == 5  # 1, 2 (fails), then 1 and 3 in the replay; then 4
        assert all(in_tx and not nested for _, in_tx, nested in seen), seen
    finally:
        stack.close()


# ----------------------------------------------------------------- what a handler must not do


def _misbehaving(kind: str, mark: type[Any]) -> Callable[[Event, Connection], None]:
    def handler(event: Event, connection: Connection) -> None:
        connection.execute(sa.insert(mark.__table__).values(n=event.payload["n"]))
        if event.payload["n"] != 2:
            return
        if kind == "connection_commit":
            connection.commit()
        elif kind == "connection_rollback":
            connection.rollback()
        elif kind == "session_rollback":
            with Session(bind=connection) as session:
                session.execute(sa.select(1))
                session.rollback()
        elif kind == "savepoint_left_open":
            connection.begin_nested()
        elif kind == "commit_caught":
            with contextlib.suppress(HandlerTransactionError):
                connection.commit()
            connection.execute(sa.insert(mark.__table__).values(n=20))

    return handler


MISUSES = {
    "connection_commit": "commit()",
    "commit_caught": "commit()",
    "connection_rollback": "rollback()",
    "session_rollback": "rollback()",
    "savepoint_left_open": "SAVEPOINT",
}


@pytest.mark.parametrize("kind", sorted(MISUSES))
def test_a_handler_that_ends_its_transaction_fails_alone_and_commits_nothing(
    db: sa.Engine, kind: str
) -> None:
    # Given events 1, 2, 3 whose handler writes a mark; the handler of 2 then misbehaves
    stack = Stack(db, inbox=False)
    try:
        stack.producer.register_handler("thing.happened", _misbehaving(kind, stack.mark))
        ids = stack.publish(1, 2, 3)
        # When the batch is consumed
        stack.step()
        # Then 1 and 3 are consumed with their marks; 2 failed, saying what it did, and
        # nothing it wrote (nor anything written before it) committed twice or early
        assert stack.marks() == [1, 3]
        assert stack.outcome(ids[0])[0] == "consumed"
        assert stack.outcome(ids[2])[0] == "consumed"
        status, error = stack.outcome(ids[1])
        assert status == "pending"
        assert "HandlerTransactionError" in error, error
        assert MISUSES[kind] in error, error
    finally:
        stack.close()


# ----------------------------------------------------------------- inline (enabled=False)


def _inline_engine(db: sa.Engine, unique: str) -> Engine:
    catalog = ServiceCatalog(namespace=f"hw-{unique}")
    catalog.configure("things", table=f"t_{unique}_outbox")
    routing = Routing(catalog)
    routing.register("thing.happened", "things")
    return Engine(SqlRepository(db), None, routing, config=EngineConfig(enabled=False))


def test_inline_a_session_handler_sees_the_callers_session_writes_and_commits_with_them(
    db: sa.Engine, unique: str
) -> None:
    # Given a disabled engine whose handler takes a Session, and request code on a Session
    mark = mark_model(f"marks_{unique}")
    mark.__table__.create(db)
    engine = _inline_engine(db, unique)
    seen: list[list[int]] = []
    try:

        @engine.register_handler("thing.happened")
        def handle(event: Event, session: Session) -> None:
            seen.append(sorted(session.scalars(sa.select(mark.n))))
            session.add(mark(n=event.payload["n"] * 10))

        # When the request code adds a mark and publishes in its session
        with Session(db) as session, session.begin():
            session.add(mark(n=1))
            engine.publish(
                PublishRequest(event_type="thing.happened", payload={"n": 1}),
                connection=session,
            )
        # Then the handler saw the caller's unflushed mark, and both committed together
        assert seen == [[1]]
        with db.connect() as conn:
            assert sorted(conn.execute(sa.select(mark.n)).scalars()) == [1, 10]
    finally:
        mark.__table__.drop(db)


def test_inline_a_handler_that_drops_its_orm_changes_raises_to_the_caller(
    db: sa.Engine, unique: str
) -> None:
    # Given a disabled engine whose handler adds to a Session it never flushes
    mark = mark_model(f"marks_{unique}")
    mark.__table__.create(db)
    engine = _inline_engine(db, unique)
    try:
        engine.register_handler("thing.happened", make_handler("neither", mark, None))
        # When request code publishes, Then publish raises and the transaction rolls back
        with (
            pytest.raises(HandlerTransactionError, match="never flushed"),
            db.begin() as conn,
        ):
            conn.execute(sa.insert(mark.__table__).values(n=1))
            engine.publish(
                PublishRequest(event_type="thing.happened", payload={"n": 5}), connection=conn
            )
        with db.connect() as conn:
            assert list(conn.execute(sa.select(mark.n)).scalars()) == []
    finally:
        mark.__table__.drop(db)


def test_inline_a_handler_that_commits_the_callers_transaction_commits_nothing(
    db: sa.Engine, unique: str
) -> None:
    # Given a disabled engine whose handler commits the connection it is given
    mark = mark_model(f"marks_{unique}")
    mark.__table__.create(db)
    engine = _inline_engine(db, unique)
    try:

        @engine.register_handler("thing.happened")
        def handle(event: Event, connection: Connection) -> None:
            connection.commit()

        # When request code writes and publishes, Then publish raises
        with pytest.raises(HandlerTransactionError, match=r"commit\(\)"), db.begin() as conn:
            conn.execute(sa.insert(mark.__table__).values(n=1))
            engine.publish(
                PublishRequest(event_type="thing.happened", payload={"n": 5}), connection=conn
            )
        # and the caller's write was not committed by the handler
        with db.connect() as conn:
            assert list(conn.execute(sa.select(mark.n)).scalars()) == []
    finally:
        mark.__table__.drop(db)


def test_a_session_parameter_is_recognised_by_its_annotation() -> None:
    from outboxkit.consume.handler_shapes import takes_session

    def with_session(event: Event, session: Session) -> None: ...

    def with_connection(event: Event, connection: Connection) -> None: ...

    # A string annotation that cannot be resolved (imported under TYPE_CHECKING only)
    namespace: dict[str, Any] = {}
    exec("def typing_only(event, session: 'orm.Session') -> None: ...", namespace)
    exec("def unannotated(event, connection): ...", namespace)

    assert takes_session(with_session)
    assert takes_session(namespace["typing_only"])
    assert not takes_session(with_connection)
    assert not takes_session(namespace["unannotated"])


def test_a_session_handler_gets_its_session_from_the_configured_factory(
    sqlite_engine: sa.Engine, unique: str
) -> None:
    # Given an application sessionmaker with options of its own, set as the session factory
    mark = mark_model(f"marks_{unique}")
    mark.__table__.create(sqlite_engine)
    catalog = ServiceCatalog(namespace=f"hw-{unique}")
    routing = Routing(catalog)
    routing.register("thing.happened", "things")
    factory = sessionmaker(info={"made_by": "the application"})
    consumer = attrs.evolve(fast_config().consumer, session_factory=factory)
    engine = Engine(
        SqlRepository(sqlite_engine),
        MemoryBroker(),
        routing,
        config=fast_config(consumer=consumer),
    )
    engine.create_schema()
    seen: list[object] = []

    @engine.register_handler("thing.happened")
    def handle(event: Event, session: Session) -> None:
        seen.append(session.info.get("made_by"))
        session.add(mark(n=event.payload["n"]))

    # When an event is consumed
    engine.publish(PublishRequest(event_type="thing.happened", payload={"n": 7}))
    engine.run_once(receive_timeout=0.05)
    # Then the handler's session came from the factory and its change committed
    assert seen == ["the application"]
    with sqlite_engine.connect() as conn:
        assert list(conn.execute(sa.select(mark.n)).scalars()) == [7]
    engine.stop(timeout=5)
