"""A typed application as a user writes it; ``mypy --strict`` must pass on this file.

tests/consume/test_user_typing.py type-checks it from the user's side and also runs it (SQLite and
the in-process broker), so the sample is a working program, not just a typing exercise.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit import (
    Engine,
    EngineConfig,
    Event,
    PublisherConfig,
    PublishRequest,
    Routing,
    ServiceCatalog,
    SideEffectHandler,
    TransactionalHandler,
)
from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    price: Decimal


@dataclasses.dataclass(frozen=True)
class OrderPlaced:
    order_id: uuid.UUID
    placed_at: datetime
    currency: Currency
    lines: tuple[Line, ...]


@attrs.frozen
class MailRequested:
    to: str
    subject: str


metadata = sa.MetaData()
shipments = sa.Table(
    "sample_shipments",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("total", sa.Numeric(12, 2), nullable=False),
)
sent_mail: list[MailRequested] = []


def build(db: sa.Engine, namespace: str) -> Engine:
    """The application's engine: routes, typed handlers, and a publisher that insists on
    the caller's transaction."""
    catalog = ServiceCatalog(namespace=namespace)
    catalog.configure("orders", table=f"{namespace}_orders_outbox")
    catalog.configure("mail", table=f"{namespace}_mail_outbox")
    routing = Routing(catalog)
    routing.register("order.placed", "orders")
    routing.register("mail.requested", "mail")
    engine = Engine(
        SqlRepository(db),
        MemoryBroker(),
        routing,
        config=EngineConfig(publisher=PublisherConfig(require_connection=True)),
    )

    @engine.register_handler("order.placed")
    def ship(event: Event[OrderPlaced], connection: Connection) -> None:
        order = event.payload  # an OrderPlaced: the annotation declares the payload type
        total = sum((line.price * line.quantity for line in order.lines), Decimal(0))
        connection.execute(shipments.insert().values(order_id=str(order.order_id), total=total))

    def send_mail(event: Event[MailRequested]) -> None:
        sent_mail.append(event.payload)

    engine.register_handler("mail.requested", send_mail, transactional=False)

    # The handler protocols type a registry of one's own.
    handlers: tuple[TransactionalHandler[OrderPlaced], SideEffectHandler[MailRequested]] = (
        ship,
        send_mail,
    )
    assert len(handlers) == 2
    return engine


def place_order(engine: Engine, db: sa.Engine, order: OrderPlaced) -> str:
    """Request code: the event is written in the business transaction."""
    with db.begin() as conn:
        event_id = engine.publish(
            PublishRequest(event_type="order.placed", message_key="customer-7", payload=order),
            connection=conn,
        )
        engine.publish(
            PublishRequest(
                event_type="mail.requested",
                payload=MailRequested(to="a@example.com", subject="thanks"),
            ),
            connection=conn,
        )
    return event_id


def sample_order() -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid.uuid4(),
        placed_at=datetime(2026, 11, 25, 13, 40, tzinfo=timezone.utc),
        currency=Currency.EUR,
        lines=(Line(sku="A-1", quantity=2, price=Decimal("9.95")),),
    )
