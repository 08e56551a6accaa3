"""An application for the operator-command tests, importable by ``outboxkit`` subprocesses.

Like a real application it reads its settings from the environment: the database URL and a
suffix that makes its service (and so table) names unique to one test. :func:`fill` drives
the engine to leave rows in every state an operator looks at.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine, EngineConfig
from outboxkit.errors import PermanentError
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Routing

PLACED = "order.placed"
CANCELLED = "order.cancelled"
INVOICED = "invoice.sent"
#: What :func:`fill` leaves behind (the tests assert against these numbers).
CONSUMED = 4
POISON = 3  # order.placed, dead: "poison pill <n>", key c-poison
BANK = 2  # order.cancelled, dead: "timeout talking to the bank", key c-cancel
FLAKY = 1  # order.placed, pending after one failed attempt
INVOICES = 3  # billing: published, never consumed


def services(suffix: str) -> tuple[str, str]:
    return f"orders-{suffix}", f"billing-{suffix}"


def _suffix() -> str:
    return os.environ["OPS_APP_SUFFIX"]


def build() -> Engine:
    """The factory the commands load: ``tests.support.ops_app:build``."""
    orders, billing = services(_suffix())
    routing = Routing()
    routing.register(PLACED, orders)
    routing.register(CANCELLED, orders)
    routing.register(INVOICED, billing)
    config = EngineConfig(
        relay_services=(orders, billing),
        consumer_services=(orders,),  # billing's rows stay published: "stuck"
        retry=RetryPolicy(base_delay=3600, max_delay=3600),
    )
    repository = SqlRepository(sa.create_engine(os.environ["OPS_APP_DATABASE_URL"]))
    engine = Engine(repository, MemoryBroker(), routing, config=config)

    @engine.register_handler(PLACED)
    def place(event: Event, connection: Connection) -> None:
        if event.payload.get("poison"):
            raise PermanentError(f"poison pill {event.payload['n']}")
        if event.payload.get("flaky"):
            raise RuntimeError("flaky downstream")

    @engine.register_handler(CANCELLED)
    def cancel(event: Event, connection: Connection) -> None:
        raise PermanentError("timeout talking to the bank")

    @engine.register_handler(INVOICED)
    def invoice(event: Event, connection: Connection) -> None:
        pass

    return engine


def handler_function(event: Event, connection: Connection) -> None:
    """Given as APP by mistake, this must be refused, never called."""
    raise AssertionError("a handler given as APP was called")


#: The application's SQLAlchemy engine, which is *not* what APP must name.
db = sa.create_engine(os.environ.get("OPS_APP_DATABASE_URL", "sqlite://"))


def fill(engine: Engine, timeout: float = 30.0) -> dict[str, Any]:
    """Publish and run the engine until every row reached the state the tests expect."""
    orders, billing = services(_suffix())
    engine.create_schema()
    requests = (
        [
            PublishRequest(event_type=PLACED, message_key=f"c{n}", payload={"n": n})
            for n in range(CONSUMED)
        ]
        + [
            PublishRequest(
                event_type=PLACED, message_key="c-poison", payload={"n": n, "poison": True}
            )
            for n in range(POISON)
        ]
        + [
            PublishRequest(event_type=CANCELLED, message_key="c-cancel", payload={"n": n})
            for n in range(BANK)
        ]
        + [PublishRequest(event_type=PLACED, message_key="c-flaky", payload={"flaky": True})]
        + [
            PublishRequest(event_type=INVOICED, message_key=f"i{n}", payload={"n": n})
            for n in range(INVOICES)
        ]
    )
    engine.publish_many(requests)
    orders_route = engine.routing.route_of_service(orders)
    billing_route = engine.routing.route_of_service(billing)
    deadline = time.monotonic() + timeout
    while True:
        engine.run_once(receive_timeout=0.05)
        o = engine.repository.count_by_status(orders_route)
        b = engine.repository.count_by_status(billing_route)
        retried = engine.repository.retry_counts(orders_route).get(1, 0)
        if (
            o[Status.CONSUMED] == CONSUMED
            and o[Status.DEAD] == POISON + BANK
            and retried == FLAKY
            and b[Status.PUBLISHED] == INVOICES
        ):
            return {"orders": orders_route, "billing": billing_route}
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine did not settle: orders {o}, billing {b}")
