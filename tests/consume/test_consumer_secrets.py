"""No value of a handler's failed SQL reaches an outbox row or a log line (issue #18, row 4).

Given a consumer sharing its producer's database, an engine created the usual way (no
``hide_parameters``) and a handler whose SQL fails on a card number that the database
quotes back (MariaDB's ``Duplicate entry '...'``, PostgreSQL's ``DETAIL: Key (card)=(...)``
and ``invalid input syntax ... "..."`` with psycopg2's ``LINE 1:`` echo), when the event is
retried and then dead, then neither the row's ``last_error`` nor any log line (traceback
included) holds the card number, and both still say what failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.engine import Engine
from outboxkit.messages import Event, PublishRequest, Status
from outboxkit.publish.publisher import PublisherConfig
from tests.support.engine import fast_config, unique_routing

CARD = "4111-1111-1111-1111"


@pytest.fixture(params=["postgres", "mysql"])
def db(request: pytest.FixtureRequest) -> sa.Engine:
    engine: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    assert not engine.hide_parameters  # the usual way: create_engine(url)
    return engine


@pytest.fixture
def cards(db: sa.Engine, unique: str) -> Iterator[sa.Table]:
    table = sa.Table(
        f"csec_{unique}_cards",
        sa.MetaData(),
        sa.Column("card", sa.String(40), primary_key=True),
        sa.Column("token", sa.Uuid(as_uuid=False)),
        sa.Column("n", sa.Integer),
    )
    table.create(db)
    with db.begin() as conn:
        conn.execute(sa.insert(table).values(card=CARD))
    yield table
    table.drop(db)


@pytest.mark.parametrize("column", ["card", "n"], ids=["duplicate-key", "not-a-number"])
def test_a_failed_handler_sql_leaves_no_value_in_the_row_or_the_logs(
    db: sa.Engine,
    cards: sa.Table,
    column: str,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given
    routing = unique_routing(unique, "billing")
    route = routing.register("card.added", "billing")
    engine = Engine(
        SqlRepository(db),
        MemoryBroker(),
        routing,
        config=fast_config(publisher=PublisherConfig(max_retry=2)),
    )
    engine.create_schema()

    @engine.register_handler("card.added")
    def add_card(event: Event, connection: sa.Connection) -> None:
        connection.execute(sa.insert(cards).values({"card": "fresh", column: CARD}))

    try:
        event_id = engine.publish(PublishRequest(event_type="card.added", payload={"card": CARD}))
        # When: retried, then dead
        with caplog.at_level(logging.DEBUG, logger="outboxkit"):
            for _ in range(4):
                engine.run_once(receive_timeout=0.05)
                due = engine.repository.now()  # no waiting for the backoff
                with db.begin() as conn:
                    table = engine.repository.table(route)  # type: ignore[attr-defined]
                    pending = table.c.status == "pending"
                    conn.execute(sa.update(table).where(pending).values(next_retry_at=due))
        row = engine.repository.get_by_event_id(route, event_id)

        # Then
        assert row is not None and row.status is Status.DEAD
        logged = [caplog.handler.format(r) for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(logged) == 2
        for text in (row.last_error or "", *logged):
            assert CARD not in text
            assert "Error" in text and "INSERT INTO" in text
    finally:
        engine.stop(timeout=5)
        with db.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {route.table}"))
