"""``Engine.tables``: the outbox tables (and hooked tables) on the application's MetaData."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.errors import ConfigurationError
from outboxkit.inbox import SqlInbox
from outboxkit.messages import PublishRequest
from outboxkit.routing import Routing, ServiceCatalog
from tests.support.engine import unique_routing


@pytest.fixture
def routing(unique: str) -> Routing:
    routing = unique_routing(unique, "orders", "billing")
    routing.register("order.placed", "orders")
    routing.register("invoice.requested", "billing")
    return routing


@pytest.fixture
def engine(sqlite_engine: sa.Engine, routing: Routing) -> Engine:
    return Engine(SqlRepository(sqlite_engine), MemoryBroker(), routing)


def test_tables_puts_every_routed_services_table_on_the_metadata(
    engine: Engine, routing: Routing
) -> None:
    metadata = sa.MetaData()
    tables = engine.tables(metadata)
    expected = [r.table for r in routing.routes()]
    assert [t.name for t in tables] == expected
    assert sorted(metadata.tables) == sorted(expected)
    # idempotent: the same Table objects, nothing added
    assert engine.tables(metadata) == tables
    assert len(metadata.tables) == 2


def test_tables_can_be_limited_to_some_services(engine: Engine, routing: Routing) -> None:
    metadata = sa.MetaData()
    (table,) = engine.tables(metadata, services=["billing"])
    assert table.name == routing.route_of_service("billing").table
    assert list(metadata.tables) == [table.name]


def test_tables_created_from_the_metadata_serve_the_engine(
    engine: Engine, sqlite_engine: sa.Engine
) -> None:
    metadata = sa.MetaData()
    engine.tables(metadata)
    # the first use of the repository is a publish inside the caller's SQLite transaction,
    # which holds the only write lock: the version check must not wait for it
    metadata.create_all(sqlite_engine)
    engine.register_handler("order.placed", lambda event, connection: None)

    with sqlite_engine.begin() as conn:
        engine.publish(PublishRequest(event_type="order.placed", payload={"n": 1}), connection=conn)
    while engine.run_once(receive_timeout=0.1):
        pass
    assert engine.backlog()["orders"]["consumed"] == 1


def test_table_sources_join_the_outbox_tables(engine: Engine, unique: str) -> None:
    def inbox(metadata: sa.MetaData) -> list[sa.Table]:
        return [
            sa.Table(f"t_{unique}_inbox", metadata, sa.Column("id", sa.Integer, primary_key=True))
        ]

    engine.add_table_source(inbox)
    metadata = sa.MetaData()
    names = [t.name for t in engine.tables(metadata)]
    assert names[-1] == f"t_{unique}_inbox"
    assert len(names) == 3


def test_a_metadata_with_another_schema_is_refused(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="default schema"):
        engine.tables(sa.MetaData(schema="elsewhere"))


def test_tables_of_an_inbox_consumer_are_its_inbox_not_the_producers_outbox(
    sqlite_engine: sa.Engine, unique: str
) -> None:
    catalog = ServiceCatalog(namespace=f"t-{unique}")
    catalog.configure("orders", table=f"t_{unique}_orders_outbox")
    catalog.configure("billing", table=f"t_{unique}_billing_outbox", inbox=True)
    routing = Routing(catalog)
    routing.register("order.placed", "orders")
    routing.register("invoice.requested", "billing")
    inbox = SqlInbox(sqlite_engine, table=f"t_{unique}_inbox")
    engine = Engine(
        SqlRepository(sqlite_engine), MemoryBroker(), routing, inboxes={"billing": inbox}
    )
    metadata = sa.MetaData()
    names = [t.name for t in engine.tables(metadata)]
    assert names == [f"t_{unique}_orders_outbox", f"t_{unique}_inbox"]
    assert engine.tables(metadata)[1] is metadata.tables[f"t_{unique}_inbox"]
    # the same tables create_schema makes: creating from the metadata serves the inbox
    metadata.create_all(sqlite_engine)
    assert inbox.get("billing-group", "no-such-event") is None
