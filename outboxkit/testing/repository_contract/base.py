"""What every part of the repository suite shares: fixtures, helpers, capability flags.

:class:`RepositoryContractBase` is the root of every role's mixin
(:mod:`outboxkit.testing.repository_contract` explains how to compose them). It collects no
test of its own. The module's functions (``_request``, ``_new_message``, ``_run_thread``,
``_outcome``, ``_statements_in_flight``, ``_wait_until_blocked``, ``_drop``) are the suite's
helpers; the role modules import them from here.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route, Routing, ServiceCatalog
from outboxkit.store import NewMessage, Repository
from outboxkit.wire.envelope import encode_shell

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


def _run_thread(
    target: Callable[[], Any], name: str | None = None
) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``target`` in a thread (named ``name``, else a unique name); the returned dict
    gets its ``result`` or ``error``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # re-raised by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name=name or f"contract-{uuid.uuid4()}")
    thread.start()
    return thread, box


def _outcome(thread: threading.Thread, box: dict[str, Any]) -> Any:
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "the operation did not finish (blocked on a lock?)"
    if "error" in box:
        raise box["error"]
    return box["result"]


#: How long a locking statement must have been waiting for an answer, while the test holds
#: the lock it needs, to count as blocked (the server has it: it is not still on its way).
_BLOCKED_AFTER = 0.1


@contextlib.contextmanager
def _statements_in_flight() -> Iterator[dict[str, tuple[str, float]]]:
    """While open: thread name -> (statement, when it was sent) of the statement that
    thread sent to a database and has no answer to yet (any engine of this process)."""
    in_flight: dict[str, tuple[str, float]] = {}

    def sent(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        in_flight[threading.current_thread().name] = (statement, time.monotonic())

    def answered(*_args: Any) -> None:
        in_flight.pop(threading.current_thread().name, None)

    listeners = (
        ("before_cursor_execute", sent),
        ("after_cursor_execute", answered),
        ("handle_error", answered),
    )
    for name, fn in listeners:
        sa.event.listen(sa.Engine, name, fn)
    try:
        yield in_flight
    finally:
        for name, fn in listeners:
            sa.event.remove(sa.Engine, name, fn)


def _blocked(
    engine: sa.Engine, table: str, thread: str, in_flight: dict[str, tuple[str, float]]
) -> bool:
    """Whether ``thread`` waits inside the database for a lock on ``table`` that the test
    holds.

    PostgreSQL says so itself (a session waiting on a lock, its statement naming the test's
    own table). Elsewhere the thread's own view decides: a statement that needs the lock
    (a locking read or update of ``table``; on SQLite ``BEGIN IMMEDIATE``, its one write
    lock) has been waiting for an answer for a while: it cannot get one while the lock is
    held. (MariaDB's ``INNODB_TRX`` did not list such a waiting read in every case.)
    """
    if engine.dialect.name == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND state = 'active' AND query LIKE :pattern"
        )
        with engine.connect() as conn:
            return int(conn.execute(sa.text(query), {"pattern": f"%{table}%"}).scalar_one()) > 0
    statement, sent_at = in_flight.get(thread, ("", time.monotonic()))
    text = " ".join(statement.upper().split())
    locking = text.startswith("BEGIN IMMEDIATE") or (
        table.upper() in text and (text.startswith("UPDATE") or "FOR UPDATE" in text)
    )
    return locking and time.monotonic() - sent_at >= _BLOCKED_AFTER


def _wait_until_blocked(
    engine: sa.Engine, table: str, thread: str, in_flight: dict[str, tuple[str, float]]
) -> None:
    """Wait (up to ``JOIN_TIMEOUT``) until thread ``thread`` waits for a lock on ``table``
    (see :func:`_blocked`); fail when it never does. A test's precondition "the other one
    is now waiting" is waited for, never assumed after a sleep."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not _blocked(engine, table, thread, in_flight):
        assert time.monotonic() < deadline, f"{thread} never waited for a lock on {table}"
        time.sleep(0.02)


def _drop(engine: sa.Engine, *tables: str) -> None:
    with engine.begin() as conn:
        for name in tables:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


class RepositoryContractBase:
    """The fixtures, helpers and capability flags of every part of the suite.

    Needs an ``engine`` fixture (a SQLAlchemy engine on the database under test).
    """

    #: Whether two claimers can hold claims at once and a locked row is skipped (``FOR
    #: UPDATE SKIP LOCKED``); false for SQLite, where claims wait for the single writer.
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
