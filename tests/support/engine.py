"""Shared pieces of the engine tests: unique routing, a business table, and waiting."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.consume.config import ConsumerConfig
from outboxkit.engine import Engine, EngineConfig
from outboxkit.messages import OutboxMessage, Status
from outboxkit.publish.publisher import PublisherConfig
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route, Routing, ServiceCatalog
from outboxkit.store import Claim, NewRowListener


def unique_routing(unique: str, *services: str) -> Routing:
    """A routing whose tables, topics and groups belong to this test only."""
    catalog = ServiceCatalog(namespace=f"t-{unique}")
    for service in services:
        catalog.configure(service, table=f"t_{unique}_{service}_outbox")
    return Routing(catalog)


def outbox_row(payload: str, **fields: Any) -> OutboxMessage:
    """A pending row as a repository would read it back; ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "id": 7,
        "event_id": None,
        "event_type": "chat.history.persist.requested",
        "service_name": "agent",
        "topic": "agent.outbox",
        "message_key": "conv-1",
        "payload": payload,
        "status": Status.PENDING,
        "retry_count": 0,
        "max_retry": 20,
        "next_retry_at": None,
        "last_error": None,
        "published_at": None,
        "consumed_at": None,
        "created_at": None,
        "updated_at": None,
    }
    values.update(fields)
    return OutboxMessage(**values)


def orders_routing(unique: str) -> Routing:
    """A routing of this test's own: ``order.placed`` -> service ``orders``."""
    routing = unique_routing(unique, "orders")
    routing.register("order.placed", "orders")
    return routing


@contextlib.contextmanager
def scratch_repository(db: sa.Engine, routing: Routing) -> Iterator[SqlRepository]:
    """A repository with ``routing``'s tables, dropped afterwards; its own pools closed
    (the shared engine stays open)."""
    repository = SqlRepository(db)
    repository.create_schema(routing.routes())
    try:
        yield repository
    finally:
        with db.begin() as conn:
            for route in routing.routes():
                quoted = conn.dialect.identifier_preparer.quote(route.table)
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {quoted}"))
        repository.close()


class ObservedRepository(SqlRepository):
    """The real repository, telling a test where the engine's loops are: a relay claimed
    and found nothing (:attr:`empty_claim`), the new-row listener is open and listening
    (:attr:`listening`). A test waits for these instead of sleeping and hoping."""

    def __init__(self, engine: sa.Engine, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self.empty_claim = threading.Event()
        self.listening = threading.Event()

    def claim_due(self, route: Route, *, limit: int, lease_seconds: float) -> Claim:
        claim = super().claim_due(route, limit=limit, lease_seconds=lease_seconds)
        if not claim.messages:
            self.empty_claim.set()
        return claim

    def new_row_listener(self) -> NewRowListener | None:
        listener = super().new_row_listener()
        if listener is not None:
            self.listening.set()
        return listener


def fast_config(**overrides: object) -> EngineConfig:
    """Engine settings that keep tests quick: short polls, 0.1 s retries, few attempts."""
    values: dict[str, object] = {
        "relay": RelayConfig(idle_interval=0.05, outage_backoff=0.2, republish_after=None),
        "consumer": ConsumerConfig(receive_timeout=0.2, outage_backoff=0.2),
        "retry": RetryPolicy.fixed(0.1),
        "publisher": PublisherConfig(max_retry=4),
    }
    values.update(overrides)
    return EngineConfig(**values)  # type: ignore[arg-type]


def business_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """Rows a handler writes; the unique key makes a double effect fail loudly."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("note", sa.String(200), nullable=False),
    )


def wait_for(predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


def failed_attempts(caplog: Any, loop: str) -> int:
    """How many attempts of an engine loop (``"relay orders"``, ``"new-row listener"``)
    failed in its current outage, by its outage log: the "paused" WARNING at the first, an
    "attempt N failed" DEBUG line at each later one (``caplog`` must capture DEBUG of
    ``outboxkit.engine.loops``)."""
    attempts = 0
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith(f"{loop} paused"):
            attempts = max(attempts, 1)
        elif message.startswith(prefix := f"{loop}: attempt "):
            attempts = max(attempts, int(message[len(prefix) :].split()[0]))
    return attempts


def count_rows(db: sa.Engine, table: sa.Table) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def fatal_error_on_start(engine: Engine, *, timeout: float, closing: Any = None) -> BaseException:
    """Start ``engine``, wait for it to stop itself on a fatal error and return that error;
    ``engine.stop`` must finish in time, then ``closing.close()`` runs (a repository)."""
    engine.start()
    try:
        wait_for(lambda: engine.fatal_error is not None, timeout=timeout, what="a fatal error")
    finally:
        assert engine.stop(timeout=5)
        if closing is not None:
            closing.close()
    assert engine.fatal_error is not None
    return engine.fatal_error
