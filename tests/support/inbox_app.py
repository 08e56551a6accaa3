"""An application whose ``billing`` service is consumed through an inbox, for CLI tests.

Its database is the SQLite file named by ``OUTBOXKIT_TEST_INBOX_APP_DB`` (set by the test).
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from outboxkit import Engine, Event
from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.inbox import SqlInbox
from outboxkit.routing import Routing, ServiceCatalog

INBOX_TABLE = "app_billing_inbox"


def engine() -> Engine:
    repository = SqlRepository.from_url(f"sqlite:///{os.environ['OUTBOXKIT_TEST_INBOX_APP_DB']}")
    catalog = ServiceCatalog(namespace="inbox-app")
    catalog.configure("orders", table="app_orders_outbox")
    catalog.configure("billing", table="app_billing_outbox", inbox=True)
    routing = Routing(catalog)
    routing.register("order.placed", "orders")
    routing.register("invoice.requested", "billing")
    app = Engine(
        repository,
        MemoryBroker(),
        routing,
        inboxes={"billing": SqlInbox(repository.engine, table=INBOX_TABLE)},
    )

    @app.register_handler("invoice.requested")
    def bill(event: Event, connection: sa.Connection) -> None:
        del event, connection

    return app
