"""``outboxkit demo``: the whole outbox at work on two services, with a summary.

Orders are written with their ``order.placed`` event in one business transaction (and some
transactions are rolled back, to show their events never leave). The ``orders`` service's
handler records a shipment and, in the same transaction, publishes ``invoice.requested``
to the ``billing`` service, whose handler records the invoice. Some orders fail on their
first attempt (to show retries) and one is invalid (to show a permanent failure going
``dead``). Every name carries a run id, so the demo can run against shared servers; its
tables are dropped at the end unless ``keep`` is set.

Embedded default: SQLite in a temporary folder and the in-process broker, no services.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from typing import Any, TextIO

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.brokers.urls import broker_from_url
from outboxkit.consume.config import ConsumerConfig
from outboxkit.engine import Engine, EngineConfig
from outboxkit.errors import PermanentError
from outboxkit.messages import Event, PublishRequest
from outboxkit.observability.logs import mask_url
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Routing, ServiceCatalog

#: Every n-th order is rolled back after publishing, every m-th fails once.
ROLLBACK_EVERY = 10
FLAKY_EVERY = 7


@attrs.frozen(kw_only=True)
class DemoSummary:
    """What the demo counted; ``ok`` is True when every committed event reached its end."""

    orders: int
    rolled_back: int
    events_published: int
    consumed: int
    dead: int
    retries: int
    leaked_rollbacks: int
    shipments: int
    invoices: int
    elapsed: float
    p50: float | None
    p95: float | None
    p99: float | None

    @property
    def ok(self) -> bool:
        expected_orders = self.orders - self.rolled_back
        return (
            self.leaked_rollbacks == 0
            and self.shipments == expected_orders - 1  # the one invalid order goes dead
            and self.invoices == self.shipments
            and self.dead == 1
        )


def run_demo(
    *,
    database_url: str | None = None,
    broker_url: str = "memory://",
    orders: int = 200,
    timeout: float = 120.0,
    keep: bool = False,
    out: TextIO = sys.stdout,
) -> DemoSummary:
    """Run the demo and print progress and a summary to ``out``."""
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="outboxkit-demo-") as folder:
        url = database_url or f"sqlite:///{folder}/demo.db"
        return _Demo(
            run_id=run_id,
            database_url=url,
            broker_url=broker_url,
            orders=orders,
            timeout=timeout,
            keep=keep,
            out=out,
        ).run()


class _Demo:
    def __init__(
        self,
        *,
        run_id: str,
        database_url: str,
        broker_url: str,
        orders: int,
        timeout: float,
        keep: bool,
        out: TextIO,
    ) -> None:
        self.out = out
        self.orders = orders
        self.timeout = timeout
        self.keep = keep
        self.database_url = database_url
        self.broker_url = broker_url
        prefix = f"demo_{run_id}"
        catalog = ServiceCatalog(namespace=f"outboxkit-demo-{run_id}")
        catalog.configure("orders", table=f"{prefix}_orders_outbox_messages")
        catalog.configure("billing", table=f"{prefix}_billing_outbox_messages")
        self.routing = Routing(catalog)
        self.routing.register("order.placed", "orders")
        self.routing.register("invoice.requested", "billing")
        self.repository = SqlRepository.from_url(database_url)
        self.db: sa.Engine = self.repository.engine
        self.metadata = sa.MetaData()
        self.orders_table = sa.Table(
            f"{prefix}_orders",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("customer", sa.String(64), nullable=False),
            sa.Column("amount", sa.Integer, nullable=False),
        )
        self.shipments = sa.Table(
            f"{prefix}_shipments",
            self.metadata,
            sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("event_id", sa.String(64), nullable=False),
        )
        self.invoices = sa.Table(
            f"{prefix}_invoices",
            self.metadata,
            sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("amount", sa.Integer, nullable=False),
        )
        config = EngineConfig(
            relay=RelayConfig(idle_interval=0.05, republish_after=30.0, republish_interval=5.0),
            consumer=ConsumerConfig(receive_timeout=0.2),
            retry=RetryPolicy.fixed(0.2),
        )
        self.engine = Engine(
            self.repository, broker_from_url(broker_url), self.routing, config=config
        )
        self.engine.register_handler("order.placed", self._ship)
        self.engine.register_handler("invoice.requested", self._invoice)

    # -------------------------------------------------------------- handlers

    def _ship(self, event: Event, connection: Connection) -> None:
        order = event.payload
        if order["amount"] <= 0:
            raise PermanentError(f"order {order['id']} has a non-positive amount")
        if order["id"] % FLAKY_EVERY == 0 and event.attempt == 1:
            raise RuntimeError(f"warehouse busy for order {order['id']} (first attempt)")
        connection.execute(
            self.shipments.insert().values(order_id=order["id"], event_id=event.event_id)
        )
        self.engine.publish(
            PublishRequest(
                event_type="invoice.requested",
                message_key=event.message_key,
                payload={"order_id": order["id"], "amount": order["amount"]},
                event_id=f"invoice-{event.event_id}",
            ),
            connection=connection,
        )

    def _invoice(self, event: Event, connection: Connection) -> None:
        connection.execute(
            self.invoices.insert().values(
                order_id=event.payload["order_id"], amount=event.payload["amount"]
            )
        )

    # -------------------------------------------------------------- run

    def run(self) -> DemoSummary:
        say = self._say
        say(f"outboxkit demo: database {self.db.url.render_as_string(hide_password=True)}")
        say(f"                broker   {mask_url(self.broker_url)}")
        self.engine.create_schema()
        self.metadata.create_all(self.db)
        try:
            return self._run()
        finally:
            self.engine.stop(timeout=10)
            if not self.keep:
                self._drop()
            self.repository.close()

    def _run(self) -> DemoSummary:
        say = self._say
        self.engine.start()
        started = time.monotonic()
        rolled_back: list[str] = []
        for n in range(1, self.orders + 1):
            amount = -5 if n == 3 else 10 + n % 90
            request = PublishRequest(
                event_type="order.placed",
                message_key=f"customer-{n % 17}",
                payload={"id": n, "customer": f"customer-{n % 17}", "amount": amount},
            )
            with self.db.connect() as conn, conn.begin() as tx:
                conn.execute(
                    self.orders_table.insert().values(
                        id=n, customer=f"customer-{n % 17}", amount=amount
                    )
                )
                self.engine.publish(request, connection=conn)
                if n % ROLLBACK_EVERY == 0:
                    tx.rollback()
                    rolled_back.append(request.event_id)
        say(f"wrote {self.orders} orders in business transactions ({len(rolled_back)} rolled back)")
        expected = (self.orders - len(rolled_back)) * 2 - 1  # -1: the dead order chains nothing
        deadline = started + self.timeout
        last_print = 0.0
        while time.monotonic() < deadline:
            stats = self.engine.stats()
            finished = stats.consumed + stats.dead
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                say(
                    f"  {time.monotonic() - started:5.1f}s  published {stats.published:5d}  "
                    f"consumed {stats.consumed:5d}  retries {stats.retried:3d}  "
                    f"dead {stats.dead}"
                )
            if finished >= expected:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        stats = self.engine.stats()
        summary = DemoSummary(
            orders=self.orders,
            rolled_back=len(rolled_back),
            events_published=stats.published,
            consumed=stats.consumed,
            dead=stats.dead,
            retries=stats.retried,
            leaked_rollbacks=self._count_leaked(rolled_back),
            shipments=self._count(self.shipments),
            invoices=self._count(self.invoices),
            elapsed=elapsed,
            p50=stats.percentile(0.50),
            p95=stats.percentile(0.95),
            p99=stats.percentile(0.99),
        )
        self._print_summary(summary)
        return summary

    def _count(self, table: sa.Table) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def _count_leaked(self, event_ids: list[str]) -> int:
        route = self.routing.route_of_service("orders")
        return sum(1 for e in event_ids if self.repository.get_by_event_id(route, e) is not None)

    def _print_summary(self, s: DemoSummary) -> None:
        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value * 1000:.1f} ms"

        say = self._say
        say("")
        say("summary")
        say(f"  orders written          {s.orders} ({s.rolled_back} rolled back)")
        say(f"  events published        {s.events_published}")
        say(f"  events consumed         {s.consumed}")
        say(f"  events dead             {s.dead}")
        say(f"  handler retries         {s.retries}")
        say(f"  rolled-back events seen {s.leaked_rollbacks}")
        say(f"  shipments / invoices    {s.shipments} / {s.invoices}")
        say(f"  elapsed                 {s.elapsed:.2f} s")
        rate = s.consumed / s.elapsed if s.elapsed else 0.0
        say(f"  throughput              {rate:.0f} events/s consumed")
        say(f"  latency p50/p95/p99     {ms(s.p50)} / {ms(s.p95)} / {ms(s.p99)}")
        for service, backlog in self.engine.backlog().items():
            say(f"  {service:<8} outbox rows    {_format_backlog(backlog)}")
        say(f"  result                  {'OK' if s.ok else 'INCOMPLETE'}")

    def _drop(self) -> None:
        tables = [r.table for r in self.routing.routes()]
        self.metadata.drop_all(self.db)
        with self.db.begin() as conn:
            for name in tables:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))  # names are validated

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _format_backlog(backlog: dict[str, Any]) -> str:
    parts = [f"{k} {v}" for k, v in backlog.items() if k != "oldest_pending_age"]
    return ", ".join(parts)
