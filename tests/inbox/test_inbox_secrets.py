"""No value of a handler's failed SQL leaves the consumer through an inbox (issue #18, row 4).

Given an inbox on PostgreSQL whose engine is created the usual way (``create_engine(url)``:
parameters not hidden, psycopg2 writing them into the statement it sends, PostgreSQL
quoting them back in ``DETAIL`` and ``LINE`` lines), when a handler's own SQL fails on a
card number until the event is dead, then the card number is in none of: the inbox's
``last_error``, the log lines and their tracebacks, the receipt on the broker, and the
producer row's ``last_error``; and what failed is still said (the error class, the
constraint or type, the statement with its placeholders).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.backends.sqlite import create_sqlite_engine
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.inbox import InboxStatus, SqlInbox
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.routing import Routing, ServiceCatalog
from tests.support.engine import fast_config

pytestmark = pytest.mark.postgres

CARD = "4111-1111-1111-1111"


@pytest.fixture
def cards(postgres_engine: sa.Engine, unique: str) -> Iterator[sa.Table]:
    """A table of the consumer's: a card number may be stored once, a token is a UUID."""
    table = sa.Table(
        f"sec_{unique}_cards",
        sa.MetaData(),
        sa.Column("card", sa.String(40), primary_key=True),
        sa.Column("token", sa.Uuid(as_uuid=False)),
    )
    table.create(postgres_engine)
    with postgres_engine.begin() as conn:
        conn.execute(sa.insert(table).values(card=CARD))
    yield table
    table.drop(postgres_engine)


#: Two ways the handler's SQL fails: the value in PostgreSQL's DETAIL line, and in its
#: primary message and the LINE echo of the statement psycopg2 wrote it into.
FAILURES = {
    "duplicate-key": ("card", "UniqueViolation", "_pkey"),
    "invalid-uuid": ("token", "InvalidTextRepresentation", "type uuid"),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failed_handler_sql_leaves_no_value_in_inbox_logs_receipt_or_producer_row(
    failure: str,
    postgres_engine: sa.Engine,
    cards: sa.Table,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given: a producer on SQLite, a consumer with an inbox on PostgreSQL
    column, driver_error, named = FAILURES[failure]
    unique = cards.name.split("_")[1]
    catalog = ServiceCatalog(namespace=f"sec-{unique}")
    catalog.configure("billing", inbox=True)
    routing = Routing(catalog)
    route = routing.register("card.added", "billing")
    broker = MemoryBroker()
    producer_db = create_sqlite_engine(f"sqlite:///{tmp_path}/producer.db")
    producer = Engine(
        SqlRepository(producer_db), broker, routing, config=fast_config(relay_services=("billing",))
    )
    inbox = SqlInbox(postgres_engine, table=f"sec_{unique}_inbox", max_attempts=2)
    consumer = Engine(
        SqlRepository(postgres_engine),
        broker.connect(),
        routing,
        config=fast_config(relay_services=()),
        inboxes={"billing": inbox},
    )
    producer.create_schema()
    inbox.create_schema()

    @consumer.register_handler("card.added")
    def add_card(event: Event, connection: sa.Connection) -> None:
        values = {"card": "fresh", column: event.payload["card"]}
        connection.execute(sa.insert(cards).values(**values))

    try:
        event_id = producer.publish(PublishRequest(event_type="card.added", payload={"card": CARD}))
        # When: the handler fails on every attempt, until the event is dead
        with caplog.at_level(logging.DEBUG, logger="outboxkit"):
            for _ in range(6):
                producer.run_once(receive_timeout=0.01)
                consumer.run_once(receive_timeout=0.05)

        # Then: dead in the inbox and on the producer's row, through the receipt
        record = inbox.get(route.group, event_id)
        assert record is not None and record.status is InboxStatus.DEAD
        row = producer.repository.get_by_event_id(route, event_id)
        assert row is not None and row.status is Status.DEAD
        receipts = broker.subscribe(f"{route.topic}.receipts", "audit", "audit")
        sent = [d.value.decode() for d in receipts.receive(timeout=0.5)]
        receipts.close()
        assert any(event_id in receipt for receipt in sent)
        failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(failures) == 2  # the first attempt (a retry) and the second (dead)
        logged = [caplog.handler.format(r) for r in failures]  # tracebacks included

        # and the card number is nowhere, while what failed is still said
        for where, text in [
            ("inbox last_error", record.last_error or ""),
            ("producer last_error", row.last_error or ""),
            *[("receipt", receipt) for receipt in sent],
            *[("log line", line) for line in logged],
        ]:
            assert CARD not in text, f"{where} holds the card number: {text}"
        for text in (record.last_error or "", row.last_error or "", *logged):
            assert driver_error in text and named in text
            assert "INSERT INTO" in text
    finally:
        consumer.stop(timeout=5)
        producer.stop(timeout=5)
        producer_db.dispose()
